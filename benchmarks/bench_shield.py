"""The safety shield's cost: the guards of one tick with and without it (``production`` and
``unshielded``), on a real observation of each example pipeline and of the deepseek-v3
cluster, median over repeats.

Run: ``python3 benchmarks/bench_shield.py [--repeats N]``.
"""

from __future__ import annotations

import argparse
import functools
import statistics
import time
from pathlib import Path

from smoelib.core.guards import guard
from smoelib.policy.base import get_decider
from smoelib.policy.baselines.common import with_overrides
from smoelib.settings import load_settings
from smoelib.sim.env import SimEnv
from smoelib.topology import build_dag

ROOT = Path(__file__).resolve().parents[1]
CASES = [("bert-moe", ROOT / "examples/pipelines/bert-moe.yml", None),
         ("bert-moe-cpu", ROOT / "examples/pipelines/bert-moe-cpu.yml", None),
         ("gpt2-moe", ROOT / "examples/pipelines/gpt2-moe.yml", None),
         ("mixtral-moe", ROOT / "examples/pipelines/mixtral-moe.yml", None),
         ("deepseek-v3", ROOT / "examples/pipelines/deepseek-v3.yml",
          ROOT / "examples/deepseek-cluster.yaml")]


def timed(fn, repeats: int) -> float:
    out = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t)
    return statistics.median(out) * 1000.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=50)
    args = parser.parse_args()
    for name, path, config in CASES:
        dag = build_dag(path)
        settings = load_settings(str(config) if config else None)
        fluid = with_overrides(settings, {"simulator.engine": "fluid"})
        env = SimEnv(dag, fluid, trace="conv", duration_s=30.0)
        obs = env.reset(seed=1)
        for _ in range(3):
            obs = env.step(None).observation
        proposal = get_decider("shield-only", dag=dag, settings=settings).decide(obs)
        run = {p: functools.partial(guard, proposal, dag=dag, settings=settings, profile=p,
                                    last=proposal, observation=obs)
               for p in ("production", "unshielded")}
        for f in run.values():
            f()  # build the service models once
        with_ms, without_ms = (timed(run[p], args.repeats) for p in run)
        print(f"{name:12s} {len(dag.experts):6d} experts: guards {without_ms:.3f} ms, with "
              f"the shield {with_ms:.3f} ms, the shield {with_ms - without_ms:.3f} ms")


if __name__ == "__main__":
    main()
