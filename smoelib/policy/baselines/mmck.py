"""Closed-form queueing results used by the ``queueing`` baseline and the simulator's tests.

Pure numpy. Times are in the unit of ``1 / mu`` (seconds when rates are per second).

- :func:`mmck`: M/M/c/K — one replica with ``c`` calls executing at once (OpenFaaS
  parallelism) and at most ``K`` in flight (``max_inflight``); arrivals beyond K are answered
  429 (blocked).
- :func:`allen_cunneen_wait`: G/G/c mean wait from the M/M/c (Erlang C) wait scaled by
  ``(ca^2 + cs^2) / 2``, the burstiness correction.
- :func:`apportion_replicas`: EPLB-style apportionment: give each next replica to the expert with
  the largest load per replica (Jefferson / D'Hondt).
- :func:`mmck_batch`: the M/M/c/K numbers for whole arrays of arrival rates at once, and
  :func:`wait_quantile`, the exponential-tail quantile of the wait, for per-tick sizing.
- :func:`eplb_plan`: DeepSeek EPLB's hierarchical balancing (groups to nodes, replication within
  nodes, balanced packing onto GPUs) for one layer, written from the README's description.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

__all__ = ["MMcK", "mmck", "erlang_c", "allen_cunneen_wait", "apportion_replicas", "mmck_batch",
           "wait_quantile", "balanced_packing", "eplb_plan"]


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


def mmck_batch(lam: np.ndarray, mu: np.ndarray, c: int, k: np.ndarray | int
               ) -> dict[str, np.ndarray]:
    """M/M/c/K for arrays: ``lam``, ``mu`` and ``k`` broadcast together; ``c`` is shared.

    Returns arrays ``p_block`` (429 probability), ``p_wait`` (an admitted call queues) and
    ``mean_wait`` (W_q of admitted calls, in the unit of ``1 / mu``).
    """
    lam, mu, k = np.broadcast_arrays(np.asarray(lam, float), np.asarray(mu, float),
                                     np.asarray(k, np.int64))
    kmax = int(k.max()) if k.size else c
    n = np.arange(kmax + 1)
    a = np.clip(lam / mu, 1e-300, 1e15)[..., None]
    # p_n / p_0 as a running product: a / min(n, c) per step (no logs: K is small)
    steps = a / np.minimum(np.maximum(n[1:], 1), c)
    p = np.concatenate([np.ones(a.shape), np.cumprod(steps, axis=-1)], axis=-1)
    p = np.where(n <= k[..., None], p, 0.0)
    p /= p.sum(axis=-1, keepdims=True)
    p_block = np.take_along_axis(p, k[..., None], axis=-1)[..., 0]
    admitted = np.maximum(1.0 - p_block, 1e-300)
    waits = (n >= c) & (n < k[..., None])
    p_wait = (p * waits).sum(-1) / admitted
    queue = (p * np.maximum(n - c, 0)).sum(-1)
    throughput = lam * admitted
    mean_wait = np.where(throughput > 0, queue / np.maximum(throughput, 1e-300), 0.0)
    zero = lam <= 0
    return {"p_block": np.where(zero, 0.0, p_block), "p_wait": np.where(zero, 0.0, p_wait),
            "mean_wait": np.where(zero, 0.0, mean_wait)}


def wait_quantile(p_wait: np.ndarray, mean_wait: np.ndarray, tail: float) -> np.ndarray:
    """The wait exceeded with probability ``tail``, for an exponential tail
    ``P(W > t) = p_wait * exp(-t * p_wait / mean_wait)`` (exact for M/M/c); 0 when
    ``p_wait <= tail``."""
    p_wait = np.asarray(p_wait, float)
    mean_wait = np.asarray(mean_wait, float)
    rate = p_wait / np.maximum(mean_wait, 1e-300)
    q = np.log(np.maximum(p_wait, 1e-300) / tail) / np.maximum(rate, 1e-300)
    return np.where((p_wait > tail) & (mean_wait > 0), q, 0.0)


def balanced_packing(weight: np.ndarray, packs: int) -> tuple[np.ndarray, np.ndarray]:
    """Pack ``n`` weighted items into ``packs`` packs of exactly ``n / packs`` items each:
    heaviest first, each into the lightest pack that still has room (ties: lower pack).

    Returns ``(pack, rank)`` per item: its pack and its position inside the pack.
    """
    weight = np.asarray(weight, float)
    per = weight.size // packs
    if per * packs != weight.size:
        raise ValueError(f"{weight.size} items do not split into {packs} equal packs")
    pack = np.full(weight.size, -1)
    rank = np.full(weight.size, -1)
    load = np.zeros(packs)
    items = np.zeros(packs, int)
    for i in np.argsort(-weight, kind="stable"):
        room = np.flatnonzero(items < per)
        p = int(room[np.argmin(load[room])])
        pack[i], rank[i] = p, items[p]
        load[p] += weight[i]
        items[p] += 1
    return pack, rank


def eplb_plan(load: np.ndarray, replicas: int, *, groups: int, nodes: int, gpus: int
              ) -> tuple[np.ndarray, np.ndarray]:
    """DeepSeek EPLB for one layer: ``replicas`` physical slots for ``len(load)`` experts.

    Hierarchical when ``nodes`` divides ``groups`` (else one group on one node): expert groups
    (consecutive experts) are packed onto nodes with balanced packing by group load; each node
    replicates its experts into ``replicas / nodes`` slots with :func:`apportion_replicas`'s rule
    (one each, then the largest load per replica); each node's slots are packed onto its GPUs
    by per-replica load.

    Returns ``(phy2log, count)``: per physical slot (GPU-major order) its expert, and the
    replicas per expert.
    """
    load = np.asarray(load, float)
    n = load.size
    if groups % nodes:
        groups, nodes = 1, 1
    size, per_node = n // groups, groups // nodes
    if size * groups != n or gpus % nodes or replicas % gpus or replicas < n:
        raise ValueError("experts, groups, nodes, GPUs and replicas do not divide evenly")
    node_of, rank_of = balanced_packing(load.reshape(groups, size).sum(1), nodes)
    # node-local order: a node's groups by rank, experts in order inside each group
    local = np.empty(n, int)
    for g in range(groups):
        local[(node_of[g] * per_node + rank_of[g]) * size + np.arange(size)] = \
            g * size + np.arange(size)
    slots, m = replicas // nodes, n // nodes
    gpu_slots = replicas // gpus
    phy2log = np.empty(replicas, int)
    count = np.zeros(n, int)
    for node in range(nodes):
        experts = local[node * m:(node + 1) * m]
        w = load[experts]
        order = list(range(m))  # physical slot -> node-local expert
        cnt = np.ones(m, int)
        for _ in range(slots - m):
            e = int(np.argmax(w / cnt))
            order.append(e)
            cnt[e] += 1
        order_arr = np.array(order)
        g_of, r_of = balanced_packing(w[order_arr] / cnt[order_arr], gpus // nodes)
        where = node * slots + g_of * gpu_slots + r_of
        phy2log[where] = experts[order_arr]
        count[experts] = cnt
    return phy2log, count
