"""Decision latency of the learned policy on CPU with torch.set_num_threads(2).

For each pipeline: random but valid observations (every rate, replica count and config drawn
within its range), a freshly initialised agent of the default PolicyConfig, and the decide path:
features (observation + DAG -> tensors), encode (DAGNN) and predict (pointer decoder, greedy,
no log-probabilities). The per-DAG tensors are built once before timing (they are cached by the
DAG). Prints median and p95 wall time over the repeats, and the thread CPU time, which is less
disturbed by other processes on a shared machine. The same ticks are then decided by the graph
the ``smoe`` deciders run with ``policy.compile`` (``compile_greedy``: torch.compile, its
one-off compilation timed), interleaved with the eager path, and the ratio of the two and the
ticks whose actions differ are printed. The policy issue's targets (bert-moe <= 2 ms,
deepseek-v3 <= 40 ms, median) are for the whole decision, guards and shield included:
``bench_decide.py`` measures that; this script times the network's part of it.

Run: python3 benchmarks/bench_policy.py [--repeat N] [--threads 2] [--pipelines a,b]
     [--layers L] [--decode-steps S] [--architecture smoe|smoe-mlp|smoe-independent]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from smoelib.core.observation import NODE_FIELDS, Observation
from smoelib.policy.agent import SMoEAgent
from smoelib.policy.config import PolicyConfig
from smoelib.policy.decider import compile_greedy
from smoelib.policy.features import build_features, dag_tensors
from smoelib.topology import build_dag

ROOT = Path(__file__).resolve().parents[1]


def random_observation(dag, rng: np.random.Generator, config: PolicyConfig) -> Observation:
    """Valid values for every per-node field (replicas within bounds, config among choices)."""
    n = len(dag.nodes)
    specs = [dag.spec(v) for v in dag.nodes]
    rmin = np.array([s.replicas_min for s in specs], float)
    rmax = np.array([s.replicas_max for s in specs], float)
    desired = np.floor(rng.uniform(rmin, rmax + 1))
    ready = np.minimum(desired, rng.integers(0, 3, n) + desired // 2)
    tokens = rng.gamma(0.5, 400.0, n)
    calls = tokens / rng.uniform(20, 200, n)
    arrays = {
        "calls_per_s": calls, "tokens_per_s": tokens, "inflight": rng.uniform(0, 8, n),
        "rejected_per_s": rng.exponential(0.1, n), "latency_p50_ms": rng.uniform(1, 20, n),
        "latency_p95_ms": rng.uniform(5, 60, n), "replicas_ready": ready,
        "replicas_desired": desired, "replicas_starting": desired - ready,
        "replicas_pending": np.zeros(n), "cpu": rng.choice(config.cpu_choices, n),
        "memory_mb": rng.choice(config.memory_choices, n).astype(float),
        "gpu_share": rng.choice(config.gpu_share_choices, n),
        "concurrency": rng.choice(config.concurrency_choices, n).astype(float)}
    assert set(arrays) == set(NODE_FIELDS)
    return Observation(time_s=60.0, nodes=dag.nodes, request_rate=5.0, p95_ms=dag.slo_ms * 0.8,
                       p99_ms=dag.slo_ms, **arrays).validate()


def measure(name: str, config: PolicyConfig, repeat: int, gpus: float) -> None:
    dag = build_dag(config=str(ROOT / "examples" / "pipelines" / f"{name}.yml"))
    start = time.perf_counter()
    dag_tensors(dag)
    setup = time.perf_counter() - start
    rng = np.random.default_rng(0)
    observations = [random_observation(dag, rng, config) for _ in range(min(repeat, 8))]
    agent = SMoEAgent(config).eval()
    wall: dict[str, list[float]] = {"features": [], "encode": [], "predict": [], "total": []}
    cpu: list[float] = []
    with torch.inference_mode():
        for i in range(repeat + 3):
            obs = observations[i % len(observations)]
            c0, t0 = time.thread_time(), time.perf_counter()
            inp, _ = build_features(obs, dag, config=config, gpus=gpus)
            t1 = time.perf_counter()
            experts, layers, graph = agent.encode(inp)
            t2 = time.perf_counter()
            agent.decoder(experts, inp.expert_valid, layers, graph, replicas=inp.replicas,
                          choice_mask=inp.choice_mask, budget=inp.budget, score=False)
            t3, c3 = time.perf_counter(), time.thread_time()
            if i < 3:  # warm-up
                continue
            for key, dt in (("features", t1 - t0), ("encode", t2 - t1), ("predict", t3 - t2),
                            ("total", t3 - t0)):
                wall[key].append(dt * 1000)
            cpu.append((c3 - c0) * 1000)

    def stats(xs: list[float]) -> str:
        return f"median {statistics.median(xs):7.2f}  p95 {np.percentile(xs, 95):7.2f}"

    print(f"{name}: {len(dag.nodes)} nodes, {len(dag.experts)} experts, "
          f"{len(dag.depth_levels)} depth levels, {len(dag.moe_layers)} MoE layers; "
          f"per-DAG setup {setup * 1000:.0f} ms (once)")
    for key, xs in wall.items():
        print(f"  {key:9s} wall ms  {stats(xs)}")
    print(f"  {'total':9s} cpu  ms  {stats(cpu)}  (main thread CPU time)")

    inp, _ = build_features(observations[0], dag, config=config, gpus=gpus)
    start = time.perf_counter()
    compiled = compile_greedy(agent, inp, name=name).result()
    if compiled is None:
        print("  torch.compile failed on this machine (see the warning): eager only")
        return
    print(f"  compiled once in {time.perf_counter() - start:.1f} s; eager and compiled, "
          "interleaved:")
    paths = {"eager": lambda i: agent(i, score=False).actions[:2],
             "compiled": lambda i: compiled(i.x, i.replicas, i.choice_mask, i.budget)}
    times: dict[str, list[float]] = {k: [] for k in paths}
    differ = 0
    with torch.inference_mode():
        for i in range(repeat + 3):
            obs = observations[i % len(observations)]
            got = {}
            for key, run in paths.items():
                t0 = time.perf_counter()
                got[key] = run(build_features(obs, dag, config=config, gpus=gpus)[0])
                if i >= 3:
                    times[key].append((time.perf_counter() - t0) * 1000)
            differ += not all(torch.equal(a, b) for a, b in zip(got["eager"], got["compiled"],
                                                                 strict=True))
    for key, xs in times.items():
        print(f"  {key:9s} wall ms  {stats(xs)}  (features + encode + predict)")
    ratio = statistics.median(times["compiled"]) / statistics.median(times["eager"])
    print(f"  compiled / eager median: {ratio:.2f}; ticks whose actions differ: {differ} of "
          f"{repeat + 3}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=30)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--pipelines", default="bert-moe,deepseek-v3")
    parser.add_argument("--layers", type=int, default=PolicyConfig.dagnn_layers)
    parser.add_argument("--decode-steps", type=int, default=PolicyConfig.decode_steps)
    parser.add_argument("--architecture", default="smoe")
    parser.add_argument("--gpus", type=float, default=64.0)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    config = PolicyConfig(dagnn_layers=args.layers, decode_steps=args.decode_steps,
                          architecture=args.architecture)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"policy decision latency: torch {torch.__version__}, {torch.get_num_threads()} "
          f"threads, python {platform.python_version()}, {platform.machine()}, "
          f"{os.cpu_count()} CPUs, load average {load:.2f}")
    print(f"config: architecture {config.architecture}, hidden {config.hidden}, dagnn_layers "
          f"{config.dagnn_layers}, bidirectional {config.bidirectional}, decode_steps "
          f"{config.decode_steps}, heads {','.join(config.heads)}; {args.repeat} repeats")
    for name in args.pipelines.split(","):
        measure(name, config, args.repeat if name != "deepseek-v3" else max(5, args.repeat // 3),
                args.gpus)


if __name__ == "__main__":
    main()
