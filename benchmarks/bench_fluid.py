"""The fast training mode's speed: simulated seconds per wall second of the fluid engine on
gpt2-moe (one hour of conv) and deepseek-v3 (its cluster), the simulator apart from the
decider, side by side with the compiled request-level engine on the same episode.

Run: ``python3 benchmarks/bench_fluid.py [--seconds S] [--deepseek-seconds S]``.

- gpt2-moe, one hour of conv at its default rate, static defaults: the fluid engine's
  ``SimEnv.step`` wall time (the simulator alone), then the same hour through the one tick
  with the ``queueing`` decider and its guards, the decider's share reported apart.
- gpt2-moe, ``--seconds`` of conv: compiled request-level engine and fluid engine side by side
  (wall and the ratio).
- deepseek-v3 (examples/deepseek-cluster.yaml), ``--deepseek-seconds`` of conv: the fluid
  engine's real-time factor.
- Memory: the bytes one more fluid environment holds after an episode (tracemalloc).
"""

from __future__ import annotations

import argparse
import time
import tracemalloc
from pathlib import Path

from smoelib.core.guards import get_profile
from smoelib.policy.base import get_decider
from smoelib.policy.baselines.common import with_overrides
from smoelib.settings import load_settings
from smoelib.sim.env import SimEnv
from smoelib.sim.loop import SimLoop
from smoelib.topology import build_dag

ROOT = Path(__file__).resolve().parents[1]
PIPES = ROOT / "examples" / "pipelines"


def settings(engine: str, config: str | None = None):
    return with_overrides(load_settings(config), {"simulator.engine": engine})


def steps(dag, s, *, trace: str, duration: float, seed: int = 1) -> tuple[SimEnv, float]:
    """A static episode stepped directly; returns the env and the wall seconds of its steps."""
    env = SimEnv(dag, s, trace=trace, duration_s=duration)
    env.reset(seed)
    t = time.perf_counter()
    done = False
    while not done:
        done = env.step(None).done
    return env, time.perf_counter() - t


def with_decider(dag, s, *, trace: str, duration: float, policy: str = "queueing"):
    """The episode through the one tick; returns (total wall, decide wall)."""
    env = SimEnv(dag, s, trace=trace, duration_s=duration)
    loop = SimLoop(env, settings=s, profile=get_profile("production"))
    decider = get_decider(policy, dag=dag, settings=s)
    spent = [0.0]
    inner = decider.decide

    def timed(obs):
        t = time.perf_counter()
        out = inner(obs)
        spent[0] += time.perf_counter() - t
        return out

    decider.decide = timed
    loop.reset(1)
    decider.reset(1)
    t = time.perf_counter()
    loop.run(decider)
    return time.perf_counter() - t, spent[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=300.0)
    parser.add_argument("--deepseek-seconds", type=float, default=120.0)
    args = parser.parse_args()
    gpt2 = build_dag(PIPES / "gpt2-moe.yml")
    fluid = settings("fluid")
    steps(gpt2, fluid, trace="conv", duration=30.0)  # load the compiled helpers
    env, wall = steps(gpt2, fluid, trace="conv", duration=3600.0)
    print(f"gpt2-moe, one hour of conv, fluid engine (simulator alone): {wall:.2f} s, "
          f"{3600 / wall:,.0f}x real time, {1000 * wall / env.tick:.2f} ms per {env.dt:g} s "
          f"tick; {env.server.calls:,} calls in the arithmetic")
    total, decide = with_decider(gpt2, fluid, trace="conv", duration=3600.0)
    print(f"  the same hour through the one tick with queueing: {total:.2f} s "
          f"({3600 / total:,.0f}x real time), of which deciding {decide:.2f} s")
    _, req = steps(gpt2, settings("compiled"), trace="conv", duration=args.seconds)
    _, flu = steps(gpt2, fluid, trace="conv", duration=args.seconds)
    print(f"gpt2-moe, {args.seconds:g} s of conv: compiled {req:.2f} s, fluid {flu:.3f} s; "
          f"fluid / compiled wall {flu / req:.4f} ({req / flu:,.0f}x faster)")
    ds = build_dag(PIPES / "deepseek-v3.yml")
    ds_s = settings("fluid", str(ROOT / "examples" / "deepseek-cluster.yaml"))
    env, wall = steps(ds, ds_s, trace="conv", duration=args.deepseek_seconds)
    print(f"deepseek-v3 ({len(ds.nodes):,} nodes), {args.deepseek_seconds:g} s of conv, fluid "
          f"engine: {wall:.2f} s, {args.deepseek_seconds / wall:.1f}x real time, "
          f"{1000 * wall / env.tick:.0f} ms per tick")
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    env, _ = steps(gpt2, fluid, trace="conv", duration=600.0)
    held = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    print(f"memory: one gpt2-moe fluid environment holds {held / 2**20:.1f} MiB after a "
          f"600 s episode")


if __name__ == "__main__":
    main()
