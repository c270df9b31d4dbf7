"""The fast mode's node model against a direct simulation of one pod fed Poisson arrivals
(docs/simulator.md, "Each node against a direct simulation of one pod").

    .venv/bin/python benchmarks/fluid_nodes.py [--calls N] [--prefill SHARE]

The pod: ``c`` workers, each of which takes every waiting call as one batch when it is free; a
batch of ``n`` calls carrying ``t`` tokens lasts ``fixed + per_call n + per_token (t - n)`` ms
times a unit-mean gamma noise of CV 0.2 (the simulator's ``service_cv``); at most
``max_inflight`` calls in the pod (in service and waiting), an arrival beyond is refused. A
share ``--prefill`` of the calls are prefill calls of 750 tokens (a conv prompt). Presets: an
expert (one worker, 0.01 + 0.505 ms a call and 0.001 ms a token: no cost to amortise) at
max_inflight 4 (the pipeline default) and 16 (`static-mean`'s), and a segment (two workers,
0.48 + 0.25 ms a call, max_inflight 8). For each rate it prints the simulation's mean call
latency (every call), calls per batch, busy fraction per worker and share of arrivals refused,
then the node model's (:func:`smoelib.sim.fluid._nodes`, one node; its latency is a decode
call's): the arithmetic, and for one worker the batch chain (``simulator.fluid_pods``).
"""

from __future__ import annotations

import argparse
import heapq

import numpy as np

from smoelib.sim import fluid
from smoelib.sim.kernel import M_BASE, M_PER_TOKEN

PRESETS = {  # name: (workers, fixed ms, ms a call, ms a token, max_inflight, rates in calls/ms)
    "expert": (1, 0.01, 0.505, 0.001, 4, (0.4, 0.8, 1.0, 1.2, 1.4, 1.6, 2.0)),
    "expert-16": (1, 0.01, 0.505, 0.001, 16, (0.4, 0.8, 1.0, 1.2, 1.4, 1.6)),
    "segment": (2, 0.48, 0.25, 0.00245, 8, (1.0, 2.0, 2.5, 3.0, 3.5, 4.0)),
}
CV = 0.2
PREFILL_TOKENS = 750.0


def simulate(lam: float, workers: int, fixed: float, per_call: float, per_token: float,
             cap: int, prefill: float, *, calls: int, seed: int = 1) -> tuple[float, ...]:
    """One pod, call by call: mean latency (ms), calls per batch, busy per worker, refused."""
    rng = np.random.default_rng(seed)
    arrive = np.cumsum(rng.exponential(1.0 / lam, calls))
    tokens = np.where(rng.random(calls) < prefill, PREFILL_TOKENS, 1.0)
    waiting: list[tuple[float, float]] = []
    running: list[tuple[float, int, list[tuple[float, float]]]] = []  # (end, id, batch)
    lat, sizes, busy, refused, t, i = [], [], 0.0, 0, 0.0, 0
    while i < calls or waiting or running:
        if i < calls and (not running or arrive[i] <= running[0][0]):
            t = arrive[i]
            if sum(len(b) for _, _, b in running) + len(waiting) >= cap:
                refused += 1
            else:
                waiting.append((t, tokens[i]))
            i += 1
        else:
            t, _, batch = heapq.heappop(running)
            lat += [t - a for a, _ in batch]
        while waiting and len(running) < workers:
            n, tok = len(waiting), sum(k for _, k in waiting)
            d = (fixed + per_call * n + per_token * (tok - n)) * rng.gamma(1 / CV**2, CV**2)
            busy += d
            sizes.append(n)
            heapq.heappush(running, (t + d, len(sizes), waiting))
            waiting = []
    return float(np.mean(lat)), float(np.mean(sizes)), busy / t / workers, refused / calls


def node_model(lam: float, workers: int, fixed: float, per_call: float, per_token: float,
               cap: int, prefill: float, *, chain: bool) -> tuple[float, ...]:
    """The fluid node model at the same pod (``chain``: ``simulator.fluid_pods: chain``, else
    the arithmetic): decode call latency (ms), calls per decode batch, busy per worker,
    refused per attempt."""
    one = np.ones(1)
    f = np.zeros((1, max(M_BASE, M_PER_TOKEN) + 1))
    f[0, M_BASE] = fixed
    out = np.zeros((1, fluid.NODE_COLUMNS))
    fluid._nodes(np.array([lam * (1 - prefill) * 1000]), np.array([lam * prefill * 1000]),
                 np.array([PREFILL_TOKENS]), np.array([PREFILL_TOKENS**2]), one.copy(),
                 np.array([float(workers)]), np.array([per_call - per_token]),
                 np.array([per_token]), np.zeros(1), one.copy(), one.copy(),
                 np.array([float(cap)]), CV**2, 0.025, 1.0, 0, np.array([1], np.int64), f,
                 np.zeros(2, np.int64), np.zeros(1), np.zeros(1), out,
                 fluid.CHAIN_MAX if chain else 0, *fluid.chain_scratch())
    return (out[0, fluid.N_WAIT] * 1000 + out[0, fluid.N_T], out[0, fluid.N_BATCH],
            out[0, fluid.N_RHO], out[0, fluid.N_BLOCK])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=200_000, help="arrivals a simulation")
    parser.add_argument("--prefill", type=float, default=0.0, help="share of prefill calls")
    args = parser.parse_args()
    for name, (workers, fixed, per_call, per_token, cap, rates) in PRESETS.items():
        print(f"{name}: {workers} worker(s), {fixed} + {per_call} ms a call, max_inflight {cap}, "
              f"prefill share {args.prefill:g}")
        print("  calls/ms | simulated: latency ms, calls/batch, busy, refused | node model: "
              "arithmetic | chain (one worker)")
        for lam in rates:
            sim = simulate(lam, workers, fixed, per_call, per_token, cap, args.prefill,
                           calls=args.calls)
            row = f"  {lam:8.2f} | {sim[0]:6.3f} {sim[1]:5.2f} {sim[2]:5.2f} {sim[3]:7.4f}"
            for chain in (False, True)[:2 if workers == 1 else 1]:
                mod = node_model(lam, workers, fixed, per_call, per_token, cap, args.prefill,
                                 chain=chain)
                row += (f" | {mod[0]:6.3f} ({mod[0] / sim[0] - 1:+.1%}) {mod[1]:5.2f} "
                        f"{mod[2]:5.2f} {mod[3]:7.4f}")
            print(row)


if __name__ == "__main__":
    main()
