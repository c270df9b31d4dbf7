"""No-load TTFT and TPOT of each example pipeline at its static defaults.

    .venv/bin/python benchmarks/no_load.py [pipeline.yml ...] [--config FILE]

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
from smoelib.sim.env import SimEnv
from smoelib.sim.summary import summarise


def no_load(path: str, *, config: str | None = None, duration_s: float = 120.0,
            fraction: float = 0.01, seed: int = 1):
    dag = build_dag(path)
    env = SimEnv(dag, load_settings(config), trace="conv-train", duration_s=duration_s,
                 rate_scale=dag.rate_scale * fraction)
    env.reset(seed)
    done = False
    while not done:
        done = env.step(None).done
    return dag, summarise(env)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("pipelines", nargs="*")
    ap.add_argument("--config", default=None)
    args = ap.parse_args()
    for path in args.pipelines or sorted(glob.glob("examples/pipelines/*.yml")):
        start = time.monotonic()
        dag, s = no_load(path, config=args.config)
        tpot = (f"TPOT P50 {s.tpot_p50_ms:.1f} ms ({s.tpot_p50_ms / s.tpot_slo_ms:.2f} of "
                f"{s.tpot_slo_ms:g})" if dag.decodes else "no decode")
        print(f"{dag.name}: {s.requests} requests, TTFT P50 {s.ttft_p50_ms:.1f} ms "
              f"({s.ttft_p50_ms / s.ttft_slo_ms:.2f} of {s.ttft_slo_ms:g}), P95 "
              f"{s.ttft_p95_ms:.1f}; {tpot}; {time.monotonic() - start:.1f} s")


if __name__ == "__main__":
    main()
