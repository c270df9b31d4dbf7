"""Vectorised environments: N episodes of one pipeline (conv-train and bursty, at 0.5x-2x
the default rate) stepped together through ``make_vector``, on the fast mode by default, for
the policy's batched forward pass; ticks a second of the batch and memory per environment.

Run: ``python3 benchmarks/bench_vector.py [--pipeline P] [--engine fluid|compiled] [--envs N]
[--seconds S]`` (defaults: gpt2-moe, fluid, 16, 300).

- Throughput: wall time of ``--seconds`` of simulated time in every environment (random
  actions, drawn before the clock starts), as environment ticks a second and as simulated
  seconds per wall second summed over the batch; one environment alone alongside, same
  scenario mix, for the ratio.
- Memory: what the batch holds after its episodes (tracemalloc, in a run of its own),
  divided by N.
"""

from __future__ import annotations

import argparse
import time
import tracemalloc
from pathlib import Path

from smoelib.settings import load_settings
from smoelib.sim.gymenv import make_vector
from smoelib.topology import build_dag

ROOT = Path(__file__).resolve().parents[1]
SCENARIOS = [{"trace": "conv-train", "rate_scale": r} for r in (0.5, 1.0, 2.0)] + \
    [{"trace": "bursty", "rate_scale": r} for r in (0.5, 1.0, 2.0)]


def episode(dag, n: int, seconds: float, *, engine: str = "fluid",
            memory: bool = False) -> tuple[float, int, float]:
    """(wall seconds, ticks stepped per environment, MiB held per environment when
    ``memory``: tracemalloc slows Python, so the timed run goes without it)."""
    settings = load_settings({"simulator": {"engine": engine}})
    if memory:
        tracemalloc.start()
        before = tracemalloc.get_traced_memory()[0]
    venv = make_vector(dag, n, duration_s=seconds, settings=settings, scenarios=SCENARIOS)
    rate = venv.envs[0].settings.control.interval_s
    ticks = int(round(seconds / rate))
    venv.action_space.seed(1)
    actions = [venv.action_space.sample() for _ in range(ticks)]
    venv.reset(seed=list(range(1, n + 1)))
    t = time.perf_counter()
    for a in actions:
        venv.step(a)
    wall = time.perf_counter() - t
    held = 0.0
    if memory:
        held = (tracemalloc.get_traced_memory()[0] - before) / n / 2**20
        tracemalloc.stop()
    venv.close()
    return wall, ticks, held


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pipeline", default="gpt2-moe.yml")
    parser.add_argument("--engine", default="fluid", choices=("fluid", "compiled"))
    parser.add_argument("--envs", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=300.0)
    args = parser.parse_args()
    dag = build_dag(ROOT / "examples" / "pipelines" / args.pipeline)
    episode(dag, 2, 20.0, engine=args.engine)  # load the compiled helpers
    for n in (1, args.envs):
        wall, ticks, _ = episode(dag, n, args.seconds, engine=args.engine)
        print(f"{n:3d} env(s) x {args.seconds:.0f} s of {dag.name} ({args.engine}, mixed "
              f"scenarios, random actions): {wall:.2f} s wall, {n * ticks / wall:,.0f} "
              f"env-ticks/s, {n * args.seconds / wall:,.0f}x real time summed")
    _, _, mib = episode(dag, args.envs, args.seconds, engine=args.engine, memory=True)
    print(f"memory: {mib:.2f} MiB per environment after the episodes ({args.envs} envs)")


if __name__ == "__main__":
    main()
