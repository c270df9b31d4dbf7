"""Simulator speed on the realistic workload: the compiled engine against the reference, side by
side in one run, and one simulated hour of conv on gpt2-moe.

Run: ``python3 benchmarks/bench_sim.py [--seconds S] [--hour] [--pipelines a.yml,b.yml]``.

- Per example pipeline at its default rate on conv (static policy, seed 1), both engines over
  the same ``--seconds``: wall time (reset and run apart), calls simulated per second, the
  real-time factor, and compiled / reference as a ratio. Both serve the same calls (the
  engines agree to the last request: tests/unit/test_compiled_engine.py).
- ``--hour``: one hour of conv on gpt2-moe with decode and per-sequence calls on the compiled
  engine, the wall time with the compiled code's load (or compilation, when the on-disk cache
  is cold) reported apart, and the calls simulated against their analytic count
  (:func:`smoelib.core.work.expected_calls`).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from smoelib.core import work
from smoelib.settings import load_settings
from smoelib.sim.env import SimEnv
from smoelib.topology import build_dag

ROOT = Path(__file__).resolve().parents[1]
PIPELINES = ("bert-moe.yml", "bert-moe-cpu.yml", "gpt2-moe.yml", "bert2bert-moe.yml",
             "mixtral-moe.yml")


def episode(dag, engine: str, *, trace: str, duration: float, seed: int = 1):
    """Run one static episode; returns (env, reset seconds, run seconds)."""
    env = SimEnv(dag, load_settings({"simulator": {"engine": engine}}), trace=trace,
                 duration_s=duration)
    t0 = time.perf_counter()
    env.reset(seed=seed)
    t1 = time.perf_counter()
    done = False
    while not done:
        done = env.step(None).done
    return env, t1 - t0, time.perf_counter() - t1


def warm_up() -> float:
    """Load (or compile) the compiled engine on a tiny episode; returns its wall seconds."""
    dag = build_dag(ROOT / "examples" / "pipelines" / "gpt2-moe.yml")
    t = time.perf_counter()
    episode(dag, "compiled", trace="conv", duration=10.0)
    return time.perf_counter() - t


def side_by_side(name: str, seconds: float) -> None:
    dag = build_dag(ROOT / "examples" / "pipelines" / name)
    runs = {e: episode(dag, e, trace="conv", duration=seconds) for e in ("compiled", "reference")}
    for engine, (env, reset_s, run_s) in runs.items():
        calls = env.server.calls
        print(f"  {name} {engine:9s}: reset {reset_s:5.1f} s + run {run_s:6.1f} s; "
              f"{calls:,} calls, {calls / run_s:,.0f} calls/s, {seconds / run_s:.2f}x real time")
    (a, _, ra), (b, _, rb) = runs["compiled"], runs["reference"]
    assert a.server.calls == b.server.calls
    print(f"  {name}: compiled / reference wall {ra / rb:.3f} ({rb / ra:.1f}x faster)")


def hour() -> None:
    dag = build_dag(ROOT / "examples" / "pipelines" / "gpt2-moe.yml")
    cache = list((ROOT / "smoelib" / "sim" / "__pycache__").glob("kernel*.nbi"))
    load_s = warm_up()
    env, reset_s, run_s = episode(dag, "compiled", trace="conv", duration=3600.0)
    tr = env.trace
    expected = float(work.expected_calls(dag, tr.tokens, tr.generated).sum())
    calls = env.server.calls
    print(f"gpt2-moe, one hour of conv x {env.rate_scale:g} ({len(tr.times_s):,} requests), "
          f"compiled engine: compiled code {'loaded from cache' if cache else 'compiled'} in "
          f"{load_s:.1f} s; reset {reset_s:.1f} s + run {run_s:.1f} s = "
          f"{reset_s + run_s + load_s:.1f} s in all; {calls:,} calls simulated, analytic "
          f"{expected:,.0f} ({calls / expected - 1:+.3%}); {calls / run_s:,.0f} calls/s, "
          f"{3600 / run_s:.1f}x real time")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--hour", action="store_true", help="only the one-hour gpt2-moe run")
    parser.add_argument("--pipelines", default=",".join(PIPELINES))
    args = parser.parse_args()
    if args.hour:
        hour()
        return
    print(f"compiled engine loaded in {warm_up():.1f} s")
    for name in args.pipelines.split(","):
        side_by_side(name, args.seconds)


if __name__ == "__main__":
    main()
