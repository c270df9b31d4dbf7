"""Simulator speed on the realistic workload: calls simulated per second of wall time.

Run: ``python3 benchmarks/bench_sim.py [--seconds S]``. Per example pipeline at its default
rate on conv (static policy, seed 1): requests, expert and segment calls simulated, wall time
(reset and run apart), calls per second and the real-time factor. That the calls simulated
match their analytic count is a test (tests/unit/test_workload.py).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from smoelib.settings import load_settings
from smoelib.sim.env import SimEnv
from smoelib.sim.summary import summarise
from smoelib.topology import build_dag

ROOT = Path(__file__).resolve().parents[1]


def run(pipeline: str, settings, *, trace: str, duration: float, seed: int = 1) -> None:
    dag = build_dag(ROOT / "examples" / "pipelines" / pipeline)
    env = SimEnv(dag, settings, trace=trace, duration_s=duration)
    t0 = time.perf_counter()
    env.reset(seed=seed)
    t1 = time.perf_counter()
    done = False
    while not done:
        done = env.step(None).done
    t2 = time.perf_counter()
    s = summarise(env)
    run_s = t2 - t1
    print(f"{pipeline}: {len(dag.experts)} experts, {dag.kind}, trace {trace} x "
          f"{env.rate_scale:g}, {duration:g} s simulated: reset {t1 - t0:.1f} s + run "
          f"{run_s:.1f} s; {s.requests} requests, {s.calls:,} calls, "
          f"{s.calls / run_s:,.0f} calls/s, {duration / run_s:.2f}x real time")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=120.0)
    args = parser.parse_args()
    for name in ("bert-moe.yml", "bert-moe-cpu.yml", "gpt2-moe.yml", "bert2bert-moe.yml",
                 "mixtral-moe.yml"):
        run(name, load_settings(None), trace="conv", duration=args.seconds)


if __name__ == "__main__":
    main()
