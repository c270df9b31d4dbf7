"""Closed-form queueing results used by the ``queueing`` baseline and the simulator's tests.

Pure numpy. Times are in the unit of ``1 / mu`` (seconds when rates are per second).

- :func:`mmck`: M/M/c/K — one replica with ``c`` calls executing at once (OpenFaaS
  parallelism) and at most ``K`` in flight (``max_inflight``); arrivals beyond K are answered
  429 (blocked).
- :func:`allen_cunneen_wait`: G/G/c mean wait from the M/M/c (Erlang C) wait scaled by
  ``(ca^2 + cs^2) / 2``, the burstiness correction.
- :func:`apportion_replicas`: EPLB-style apportionment: give each next replica to the expert with
  the largest load per replica (Jefferson / D'Hondt).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

__all__ = ["MMcK", "mmck", "erlang_c", "allen_cunneen_wait", "apportion_replicas"]


@dataclass(frozen=True)
class MMcK:
    """Steady state of one M/M/c/K queue.

    ``p_block``: probability an arrival finds K in flight (429). ``mean_in_system``: L.
    ``mean_wait``: W_q of admitted calls (excludes service). ``mean_response``: W = W_q + 1/mu.
    ``throughput``: admitted rate, lambda (1 - p_block).
    """

    p_block: float
    mean_in_system: float
    mean_queue: float
    mean_wait: float
    mean_response: float
    throughput: float


def mmck(lam: float, mu: float, c: int, k: int) -> MMcK:
    """M/M/c/K with arrival rate ``lam``, service rate ``mu`` per server, ``c`` servers,
    capacity ``k >= c`` (in service plus waiting).

    Raises:
        ValueError: non-positive rates, ``c < 1`` or ``k < c``.
    """
    if lam < 0 or mu <= 0 or c < 1 or k < c:
        raise ValueError(f"need lam >= 0, mu > 0, 1 <= c <= k; got {lam}, {mu}, {c}, {k}")
    if lam == 0:
        return MMcK(0.0, 0.0, 0.0, 0.0, 1.0 / mu, 0.0)
    a = lam / mu
    # log-space unnormalised probabilities p_n for n = 0..k
    n = np.arange(k + 1)
    log_p = np.where(
        n <= c,
        n * math.log(a) - np.array([math.lgamma(i + 1) for i in n]),
        n * math.log(a) - math.lgamma(c + 1) - (n - c) * math.log(c),
    )
    log_p -= log_p.max()
    p = np.exp(log_p)
    p /= p.sum()
    p_block = float(p[k])
    length = float((n * p).sum())
    queue = float((np.maximum(n - c, 0) * p).sum())
    throughput = lam * (1.0 - p_block)
    wait = queue / throughput if throughput > 0 else 0.0
    return MMcK(p_block, length, queue, wait, wait + 1.0 / mu, throughput)


def erlang_c(lam: float, mu: float, c: int) -> float:
    """Probability an arrival waits in M/M/c (1.0 when the queue is unstable)."""
    a = lam / mu
    if a >= c:
        return 1.0
    log_terms = [i * math.log(a) - math.lgamma(i + 1) for i in range(c)] if a > 0 else [0.0]
    top = c * math.log(a) - math.lgamma(c + 1) + math.log(c / (c - a)) if a > 0 else -math.inf
    m = max(max(log_terms), top)
    denom = sum(math.exp(t - m) for t in log_terms) + math.exp(top - m)
    return math.exp(top - m) / denom


def allen_cunneen_wait(lam: float, mu: float, c: int, *, ca2: float = 1.0,
                       cs2: float = 1.0) -> float:
    """Approximate mean wait of G/G/c: Erlang C wait x (ca^2 + cs^2) / 2 (inf if unstable).

    ``ca2`` and ``cs2`` are the squared coefficients of variation of inter-arrival and service
    times (1 for Poisson / exponential).
    """
    if lam >= c * mu:
        return math.inf
    wait_mmc = erlang_c(lam, mu, c) / (c * mu - lam)
    return wait_mmc * (ca2 + cs2) / 2.0


def apportion_replicas(load: np.ndarray, total: int, *, minimum: np.ndarray | None = None
                       ) -> np.ndarray:
    """Split ``total`` replicas over experts in proportion to ``load``, EPLB style.

    Every expert first gets its ``minimum`` (default 1 where load > 0, else 0); each further
    replica goes to the expert with the largest load per replica, ties to the lower index.
    """
    load = np.asarray(load, dtype=float)
    if minimum is None:
        minimum = (load > 0).astype(int)
    replicas = np.asarray(minimum, dtype=int).copy()
    if replicas.sum() > total:
        raise ValueError(f"minimum replicas {replicas.sum()} exceed the total {total}")
    for _ in range(total - int(replicas.sum())):
        per_replica = load / np.maximum(replicas, 1)
        per_replica[(replicas == 0) & (load > 0)] = np.inf  # an unserved expert comes first
        replicas[int(np.argmax(per_replica))] += 1
    return replicas
