"""No-load TTFT and TPOT of each example pipeline at its static defaults, and (``--busy``) how
busy one replica of the hottest expert is at the trace's peak minute at the default rate.

    .venv/bin/python benchmarks/no_load.py [pipeline.yml ...] [--config FILE] [--busy]

Runs the request-level simulator at 1 % of the pipeline's default rate on conv-train (seed 1,
120 s, replicas at their defaults) and prints P50/P95 TTFT and TPOT with their ratio to the
SLO: the arithmetic the example files' SLO comments state (tests/unit/test_examples_slo.py
checks the 0.3-0.6 band).
"""

from __future__ import annotations

import argparse
import glob
import time

from smoelib.pipeline.topology import build_dag
from smoelib.settings import load_settings
from smoelib.sim import pipelines
from smoelib.sim.env import SimEnv


def no_load(path: str, *, config: str | None = None, duration_s: float = 120.0,
            fraction: float = 0.01, seed: int = 1):
    """``(dag, summary)`` of the pipeline file at no load (:func:`smoelib.sim.pipelines.no_load`,
    which also sets the random pipelines' SLOs)."""
    dag = build_dag(path)
    return dag, pipelines.no_load(dag, settings=load_settings(config), duration_s=duration_s,
                                  fraction=fraction, seed=seed)


def busy_at_peak(path: str, *, config: str | None = None, duration_s: float = 2400.0,
                 seed: int = 1) -> tuple[float, str, float]:
    """``(busy, expert, t_s)``: the highest 60 s mean busy fraction of one replica of any
    expert (busy seconds / (ready replicas x workers x 60 s)) on conv-train at the pipeline's
    default rate, one replica per expert (the static defaults), where and when."""
    import numpy as np

    dag = build_dag(path)
    env = SimEnv(dag, load_settings(config), trace="conv-train", duration_s=duration_s)
    env.reset(seed)
    experts = np.flatnonzero(env.is_expert)
    per_tick = []
    done = False
    while not done:
        r = env.step(None)
        done = r.done
        b = env.tel.bins[env.tick - 1]
        ready = np.maximum(r.observation.replicas_ready, 1) * env.server.par
        per_tick.append(b["busy_s"] / (ready * env.dt))
    busy = np.array(per_tick)[:, experts]
    k = max(1, int(round(60.0 / env.dt)))
    minute = np.array([busy[i:i + k].mean(axis=0) for i in range(0, busy.shape[0] - k + 1)])
    t, e = np.unravel_index(int(np.argmax(minute)), minute.shape)
    return float(minute[t, e]), dag.nodes[experts[e]], float(t * env.dt)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("pipelines", nargs="*")
    ap.add_argument("--config", default=None)
    ap.add_argument("--busy", action="store_true", help="also the hottest expert at the peak")
    args = ap.parse_args()
    for path in args.pipelines or sorted(glob.glob("examples/pipelines/*.yml")):
        if args.busy:
            busy, node, t = busy_at_peak(path, config=args.config)
            print(f"{path}: hottest replica {node} {busy:.0%} busy in the minute from {t:.0f} s")
        start = time.monotonic()
        dag, s = no_load(path, config=args.config)
        tpot = (f"TPOT P50 {s.tpot_p50_ms:.1f} ms ({s.tpot_p50_ms / s.tpot_slo_ms:.2f} of "
                f"{s.tpot_slo_ms:g})" if dag.decodes else "no decode")
        print(f"{dag.name}: {s.requests} requests, TTFT P50 {s.ttft_p50_ms:.1f} ms "
              f"({s.ttft_p50_ms / s.ttft_slo_ms:.2f} of {s.ttft_slo_ms:g}), P95 "
              f"{s.ttft_p95_ms:.1f}; {tpot}; {time.monotonic() - start:.1f} s")


if __name__ == "__main__":
    main()
