"""The whole decision of one control tick, as the controller runs it: the bundled ``smoe``
policy's features, encoder and decoder (``decide``), then the ``production`` guards with the
shield, through :func:`smoelib.core.tick.tick`. CPU, ``policy.torch_threads`` threads (2 by
default).

Observations come from the simulated cluster (fast mode, conv, seed 1): a few warm-up ticks,
then one tick per repeat, the decision applied as the loop applies it, so the guards see the
state they see in a run. The eager path and, unless ``--no-compile``, the ``torch.compile``d
one (``policy.compile``; its one-off compilation waited for and reported) decide the same
observations, interleaved, so their ratio is fair on a busy machine. Targets (the policy
issue): bert-moe at most 2 ms median, deepseek-v3 scale at most 40 ms. The header times two
fixed operations that lead the network's profile at deepseek-v3 size (a tanh of 480,000 floats
and the gate inputs' ``addmm``, 14,972 x 32 by 32 x 96), so runs on different machines can be
set against each other's speed.

Run: ``python3 benchmarks/bench_decide.py [--repeats N] [--pipelines bert-moe,deepseek-v3]
[--no-compile] [--checkpoint PATH]`` (``--checkpoint``: another checkpoint than the bundled
one, ``policy.checkpoint``).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from pathlib import Path

import torch

from smoelib.core.tick import TickState, tick
from smoelib.policy.base import get_decider
from smoelib.policy.baselines.common import with_overrides
from smoelib.settings import load_settings
from smoelib.sim.env import SimEnv
from smoelib.topology import build_dag

ROOT = Path(__file__).resolve().parents[1]
CASES = {"bert-moe": (ROOT / "examples/pipelines/bert-moe.yml", None, 2.0),
         "gpt2-moe": (ROOT / "examples/pipelines/gpt2-moe.yml", None, 2.0),
         "mixtral-moe": (ROOT / "examples/pipelines/mixtral-moe.yml", None, None),
         "deepseek-v3": (ROOT / "examples/pipelines/deepseek-v3.yml",
                         ROOT / "examples/deepseek-cluster.yaml", 40.0)}


def measure(name: str, repeats: int, compile_too: bool, checkpoint: str = "") -> None:
    path, config, target = CASES[name]
    dag = build_dag(path)
    settings = with_overrides(load_settings(str(config) if config else None),
                              {"policy.checkpoint": checkpoint})
    env = SimEnv(dag, with_overrides(settings, {"simulator.engine": "fluid"}), trace="conv",
                 duration_s=5.0 * (repeats + 10))
    paths = {"eager": with_overrides(settings, {"policy.compile": False})}
    if compile_too:
        paths["compiled"] = with_overrides(settings, {"policy.compile": True})
    deciders = {k: get_decider("smoe", dag=dag, settings=s) for k, s in paths.items()}
    obs = env.reset(seed=1)
    states = {k: TickState() for k in deciders}
    for d in deciders.values():
        d.reset(1)
    note = ""
    if compile_too:
        start = time.perf_counter()
        tick(obs, deciders["compiled"], states["compiled"], dag=dag, settings=settings,
             profile="production", now=0.0)  # starts the compilation
        ok = deciders["compiled"].wait_compiled()
        note = (f"; compiled once in {time.perf_counter() - start:.1f} s" if ok
                else "; torch.compile failed here: eager only")
        if not ok:
            deciders.pop("compiled")
    times: dict[str, dict[str, list[float]]] = {k: {"decide": [], "total": []}
                                                for k in deciders}
    for i in range(repeats + 3):
        now = 5.0 * (i + 1)
        results = {}
        for key, decider in deciders.items():
            t0 = time.perf_counter()
            results[key] = tick(obs, decider, states[key], dag=dag, settings=settings,
                                profile="production", now=now)
            if i >= 3:
                times[key]["total"].append((time.perf_counter() - t0) * 1000.0)
                times[key]["decide"].append(results[key].decide_ms)
            states[key] = results[key].state
        decision = results["eager"].decision
        obs = env.step(decision).observation
    print(f"{name}: {len(dag.experts)} experts, {len(dag.nodes)} nodes{note}")
    for key, t in times.items():
        total = statistics.median(t["total"])
        decide = statistics.median(t["decide"])
        goal = f"; target {target:g} ms: {'met' if total <= target else 'missed'}" \
            if target else ""
        print(f"  {key:8s} median: decide {decide:7.2f} ms + guards and shield "
              f"{total - decide:6.2f} ms = {total:7.2f} ms{goal}")


def machine_reference(repeats: int = 50) -> str:
    """Median times of two fixed operations (module docstring), this process's threads."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(480_000, generator=gen)
    a, w, b = (torch.randn(14_972, 32, generator=gen), torch.randn(32, 96, generator=gen),
               torch.randn(96, generator=gen))

    def median_us(op) -> float:
        op()
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            op()
            times.append((time.perf_counter() - t0) * 1e6)
        return statistics.median(times)

    return (f"tanh of 480k floats {median_us(lambda: torch.tanh(x)):.0f} us, addmm 14972x32x96 "
            f"{median_us(lambda: torch.addmm(b, a, w)):.0f} us")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--pipelines", default="bert-moe,deepseek-v3")
    parser.add_argument("--no-compile", action="store_true")
    parser.add_argument("--checkpoint", default="", help="a checkpoint (default: the bundled)")
    args = parser.parse_args()
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"one tick's decision: torch {torch.__version__}, python "
          f"{platform.python_version()}, {platform.machine()}, {os.cpu_count()} CPUs, load "
          f"average {load:.2f}; {args.repeats} repeats")
    torch.set_num_threads(load_settings(None).policy.torch_threads)
    print(f"machine reference ({torch.get_num_threads()} threads): {machine_reference()}")
    for name in args.pipelines.split(","):
        measure(name, args.repeats, not args.no_compile, args.checkpoint)


if __name__ == "__main__":
    main()
