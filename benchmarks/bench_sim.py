"""Simulator speed: one hour of the conv trace on bert-moe (target: at most 10 s on 2 cores),
and DeepSeek-V3 scale in the aggregated mode (target: at least 10x faster than real time).

Run: ``python3 benchmarks/bench_sim.py [--deepseek-seconds S]``. Prints one line per figure.
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
    print(f"{pipeline}: {len(dag.experts)} experts, mode {env.mode}, trace {trace}, "
          f"{duration:g} s simulated: reset {t1 - t0:.1f} s + run {t2 - t1:.1f} s = "
          f"{t2 - t0:.1f} s wall ({duration / (t2 - t1):.0f}x real time); "
          f"{s.requests} requests, P95 {s.p95_ms:.1f} ms, cost {s.cost:.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--deepseek-seconds", type=float, default=300.0)
    args = parser.parse_args()
    run("bert-moe.yml", load_settings(None), trace="conv", duration=3600.0)
    big = load_settings({"cluster": {"gpus": 4096, "cpu_cores": 1e6, "memory_gib": 1e6}})
    run("deepseek-v3.yml", big, trace="conv", duration=args.deepseek_seconds)


if __name__ == "__main__":
    main()
