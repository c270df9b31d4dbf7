"""Vectorised environments: N episodes of the Gymnasium form stepped together, their memory and
their speed.

Run: ``python3 benchmarks/bench_vector.py [--pipeline P] [--envs 1,4,16] [--ticks T]``.
Per N: the resident memory the N environments add (after reset and ``--ticks`` steps, over
the process before them), per environment; and the environment steps (control ticks) per
second of wall time with random actions, on the request-level compiled engine (the fast
training mode is not built yet).
"""

from __future__ import annotations

import argparse
import gc
import resource
import time
from pathlib import Path

import numpy as np

from smoelib.sim.gymenv import make_vector

ROOT = Path(__file__).resolve().parents[1]


def rss_mib() -> float:
    """This process's peak resident memory (MiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def run(pipeline: str, n: int, ticks: int, trace: str) -> None:
    gc.collect()
    before = rss_mib()
    venv = make_vector(str(ROOT / "examples" / "pipelines" / pipeline), n, trace=trace,
                       duration_s=3600.0)
    venv.reset(seed=list(range(1000, 1000 + n)))
    venv.action_space.seed(1)
    t = time.perf_counter()
    for _ in range(ticks):
        _, rewards, _, _, _ = venv.step(venv.action_space.sample())
        assert np.isfinite(rewards).all()
    wall = time.perf_counter() - t
    after = rss_mib()
    venv.close()
    print(f"{pipeline} on {trace}, {n} environments x {ticks} ticks: {n * ticks / wall:.1f} "
          f"environment ticks/s ({wall:.1f} s); peak memory +{after - before:.0f} MiB, "
          f"{(after - before) / n:.1f} MiB per environment")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pipeline", default="bert-moe-cpu.yml")
    parser.add_argument("--trace", default="conv-train")
    parser.add_argument("--envs", default="1,4,16")
    parser.add_argument("--ticks", type=int, default=12)
    args = parser.parse_args()
    for n in (int(x) for x in args.envs.split(",")):
        run(args.pipeline, n, args.ticks, args.trace)


if __name__ == "__main__":
    main()
