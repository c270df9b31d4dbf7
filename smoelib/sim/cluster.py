"""Pods of the simulated cluster: creation, cold start, placement, rollouts, resize, billing.

One pod table (numpy columns, grown by doubling) holds every pod ever created. A pod is
*pending* (no room: ``start`` is inf), *starting* (``start <= t < ready``), *ready*
(``ready <= t < end``) or gone (``end <= t``). Cold start = lognormal container start plus
``weights_mb / weights_load_mb_per_s``. Placement follows the GPU sharing mode of DESIGN.md:
A pod whose memory is below its node's floor (runtime plus weights) is OOM-killed at start and
restarts every cold start plus ``oom_restart_s`` (CrashLoopBackOff) without ever serving; each
restart counts as a cold start. ``mps-env`` packs pods first-fit on GPUs while the shares on a
GPU sum to at most 1 and its MPS clients stay within the limit; ``mps-device-plugin`` gives
every GPU pod one of ``slots_per_gpu`` slots and a share of ``1 / slots_per_gpu``; ``none``
runs every pod on CPU. Cores and memory are checked cluster-wide. Pods that do not fit stay
Pending and are retried in creation order. Pure: time and the RNG are passed in.
"""

from __future__ import annotations

import math

import numpy as np

from smoelib.core.accounting import gpu_per_pod, pod_price_per_hour
from smoelib.settings import Settings

__all__ = ["Cluster"]

_COLS = {"node": np.int64, "start": float, "ready": float, "end": float, "created": float,
         "cpu": float, "mem": float, "share": float, "conc": np.int64, "version": np.int64,
         "gpu": np.int64, "oom": np.int64}


class Cluster:
    """Every pod of one pipeline on one simulated cluster.

    Args:
        n_nodes: nodes of the pipeline (pods exist only for nodes with a function).
        weights_mb: per node, parameter size (cold start).
        floor_mb: per node, the least memory a replica runs in (OOM below).
        settings: the settings tree (cluster, gpu_sharing, prices, simulator sections).
        rng: the cluster-noise generator (cold-start draws).
    """

    def __init__(self, n_nodes: int, weights_mb: np.ndarray, *, settings: Settings,
                 rng: np.random.Generator, floor_mb: np.ndarray | None = None):
        self.s = settings
        self.rng = rng
        self.mode = settings.gpu_sharing.mode
        self.weights_mb = np.asarray(weights_mb, dtype=float)
        self.floor_mb = (np.zeros(n_nodes) if floor_mb is None
                         else np.asarray(floor_mb, dtype=float))
        self.oom_kills = 0
        self.n = 0
        self.cols = {k: np.zeros(64, dtype=t) for k, t in _COLS.items()}
        self.live: list[list[int]] = [[] for _ in range(n_nodes)]  # pods whose end is inf
        self.ended: list[list[int]] = [[] for _ in range(n_nodes)]  # ended, maybe still serving
        self.version = np.zeros(n_nodes, dtype=np.int64)
        self.pending: list[int] = []
        self.cold_starts = 0
        self.replaced = 0
        self.resized = 0
        self.gpus = settings.cluster.gpus if self.mode != "none" else 0

    # ---- pod table ----------------------------------------------------------------------
    def _add(self, **values: float) -> int:
        if self.n == self.cols["node"].size:
            for k, v in self.cols.items():
                self.cols[k] = np.concatenate([v, np.zeros_like(v)])
        pid = self.n
        for k, v in values.items():
            self.cols[k][pid] = v
        self.n += 1
        return pid

    def _alive(self, t: float) -> np.ndarray:
        c = self.cols
        n = self.n
        return np.flatnonzero((c["start"][:n] <= t) & (c["end"][:n] > t))

    # ---- placement ----------------------------------------------------------------------
    def _fits(self, t: float, pids: list[int]) -> list[int]:
        """Schedule ``pids`` (in order) at ``t`` where room allows; returns those placed."""
        c = self.cols
        alive = self._alive(t)
        cpu_free = self.s.cluster.cpu_cores - c["cpu"][alive].sum()
        mem_free = self.s.cluster.memory_gib * 1024 - c["mem"][alive].sum()
        on_gpu = alive[c["gpu"][alive] >= 0]
        used = np.bincount(c["gpu"][on_gpu], weights=c["share"][on_gpu],
                           minlength=self.gpus).astype(float)  # (empty input gives ints)
        clients = np.bincount(c["gpu"][on_gpu], minlength=self.gpus).astype(float)
        slots = self.s.gpu_sharing.slots_per_gpu
        limit = (self.s.gpu_sharing.max_clients_per_gpu if self.mode == "mps-env" else slots)
        placed = []
        for pid in pids:
            if c["cpu"][pid] > cpu_free + 1e-9 or c["mem"][pid] > mem_free + 1e-9:
                continue
            share = c["share"][pid]
            if share > 0:
                if self.gpus == 0:
                    continue
                room = (used + share <= 1 + 1e-9) & (clients < limit)
                if not room.any():
                    continue
                g = int(np.argmax(room))
                used[g] += share
                clients[g] += 1
                c["gpu"][pid] = g
            cpu_free -= c["cpu"][pid]
            mem_free -= c["mem"][pid]
            start_s = self.rng.lognormal(math.log(self.s.simulator.cold_start_median_s),
                                         self.s.simulator.cold_start_sigma)
            load_s = self.weights_mb[c["node"][pid]] / self.s.simulator.weights_load_mb_per_s
            c["start"][pid] = t
            c["ready"][pid] = t + start_s + load_s
            self.cold_starts += 1
            if c["mem"][pid] < self.floor_mb[c["node"][pid]]:
                self._oom(pid, t)
            placed.append(pid)
        return placed

    def _oom(self, pid: int, t: float) -> None:
        """``pid`` runs out of memory as it loads: it never becomes ready and restarts every
        median cold start plus weight load plus ``oom_restart_s`` (:meth:`oom_restarts`)."""
        c = self.cols
        c["oom"][pid] = 1
        c["ready"][pid] = math.inf
        c["created"][pid] = t  # the crash loop's phase
        self.oom_kills += 1

    def oom_restarts(self, t0: float, t1: float) -> int:
        """Restarts of OOM-killed pods in ``[t0, t1)``; each also counts as a cold start."""
        c, n = self.cols, self.n
        m = (c["oom"][:n] == 1) & (c["end"][:n] > t0)
        if not m.any():
            return 0
        sim = self.s.simulator
        cycle = (sim.cold_start_median_s + self.weights_mb[c["node"][:n][m]]
                 / sim.weights_load_mb_per_s + sim.oom_restart_s)
        born = c["created"][:n][m]
        end = np.minimum(c["end"][:n][m], t1)
        k = lambda t: np.floor(np.maximum(t - born, 0) / cycle)  # noqa: E731
        restarts = int((k(end) - k(np.maximum(t0, born))).sum())
        self.cold_starts += restarts
        self.oom_kills += restarts
        return restarts

    def schedule_pending(self, t: float) -> None:
        """Retry Pending pods (creation order) at ``t``."""
        if self.pending:
            placed = set(self._fits(t, self.pending))
            self.pending = [p for p in self.pending if p not in placed]

    # ---- scaling ------------------------------------------------------------------------
    def create(self, node: int, t: float, count: int, *, cpu: float, mem: float, share: float,
               conc: int) -> list[int]:
        """Create ``count`` pods of ``node`` at ``t`` at the given config; schedule them."""
        share = gpu_per_pod(share, mode=self.mode, slots_per_gpu=self.s.gpu_sharing.slots_per_gpu)
        pids = [self._add(node=node, start=math.inf, ready=math.inf, end=math.inf, created=t,
                          cpu=cpu, mem=mem, share=share, conc=conc,
                          version=self.version[node], gpu=-1) for _ in range(count)]
        self.live[node].extend(pids)
        placed = set(self._fits(t, pids)) if not self.pending else set()
        self.pending.extend(p for p in pids if p not in placed)
        return pids

    def terminate(self, node: int, t: float, count: int) -> None:
        """Remove ``count`` pods of ``node`` at ``t``: pending, then starting, then old
        version, then the newest (the ReplicaSet's scale-down ranking)."""
        c = self.cols
        rank = sorted(self.live[node], key=lambda p: (c["start"][p] <= t, c["ready"][p] <= t,
                                                      c["version"][p] >= self.version[node],
                                                      -c["created"][p]))
        for pid in rank[:count]:
            self.terminate_pod(pid, t)

    def reconcile(self, node: int, t: float, replicas: int, template: tuple) -> None:
        """Bring ``node`` to ``replicas`` live pods (the Deployment controller)."""
        have = len(self.live[node])
        if have < replicas:
            cpu, mem, share, conc = template
            self.create(node, t, replicas - have, cpu=cpu, mem=mem, share=share, conc=conc)
        elif have > replicas:
            self.terminate(node, t, have - replicas)

    def roll(self, node: int, t: float, replicas: int, template: tuple) -> None:
        """One step of a rolling update towards the current version (maxSurge 25 % rounded
        up, maxUnavailable 25 % rounded down): each new pod replaces one old pod, which ends
        when its replacement is ready."""
        c = self.cols
        v = self.version[node]
        pods = self.live[node]
        old = [p for p in pods if c["version"][p] < v]
        if not old:
            return
        for p in [p for p in old if c["ready"][p] > t]:  # old pods not serving yet: drop now
            ready_at = c["ready"][p]
            self.terminate_pod(p, t)
            # the serving pod it was to replace stays until a pod of the newest version is
            # ready (the Deployment controller scales down only available old pods)
            for q in [q for q in self.ended[node] if c["end"][q] == ready_at > t]:
                self.ended[node].remove(q)
                self.live[node].append(q)
                c["end"][q] = math.inf
        old = [p for p in self.live[node] if c["version"][p] < v]
        surge = max(1, math.ceil(0.25 * replicas))
        budget = replicas + surge - len(self.live[node])
        for p in old[:max(budget, 0)]:
            cpu, mem, share, conc = template
            new = self.create(node, t, 1, cpu=cpu, mem=mem, share=share, conc=conc)[0]
            self.replaced += 1
            if c["ready"][new] < math.inf:
                c["end"][p] = c["ready"][new]
                self.live[node].remove(p)
                self.ended[node].append(p)

    def rolling(self, node: int) -> bool:
        """Whether ``node`` still has live pods of an older version."""
        v = self.cols["version"]
        return any(v[p] < self.version[node] for p in self.live[node])

    def terminate_pod(self, pid: int, t: float) -> None:
        c = self.cols
        node = int(c["node"][pid])
        if c["start"][pid] > t:
            c["start"][pid] = c["ready"][pid] = t
        c["end"][pid] = t
        self.live[node].remove(pid)
        self.ended[node].append(pid)
        if pid in self.pending:
            self.pending.remove(pid)

    def resize(self, node: int, t: float, cpu: float, mem: float) -> None:
        """In-place resize (pods/resize) of the live pods of ``node``."""
        c = self.cols
        floor = self.floor_mb[node]
        for pid in self.live[node]:
            if c["cpu"][pid] != cpu or c["mem"][pid] != mem:
                c["cpu"][pid], c["mem"][pid] = cpu, mem
                self.resized += 1
                if c["start"][pid] > t:
                    continue
                if mem < floor and not c["oom"][pid]:
                    self._oom(pid, t)
                elif mem >= floor and c["oom"][pid]:  # restarts with room: a cold start
                    c["oom"][pid] = 0
                    c["ready"][pid] = t + self.weights_mb[node] / \
                        self.s.simulator.weights_load_mb_per_s + \
                        self.s.simulator.cold_start_median_s
                    self.cold_starts += 1

    # ---- reading ------------------------------------------------------------------------
    def serving(self, node: int, t0: float, t1: float) -> list[tuple[float, tuple[int, ...]]]:
        """Pods of ``node`` serving during ``[t0, t1)``: ``[(from_t, pods), ...]`` pieces."""
        c = self.cols
        ready, end = c["ready"], c["end"]
        ids = [p for p in self.ended[node] if end[p] > t0] + self.live[node]
        if all(ready[p] <= t0 and end[p] >= t1 for p in ids):
            return [(t0, tuple(ids))]
        cuts = sorted({t0, *(ready[p] for p in ids if t0 < ready[p] < t1),
                       *(end[p] for p in ids if t0 < end[p] < t1)})
        return [(a, tuple(p for p in ids if ready[p] <= a < end[p])) for a in cuts]

    def forget_ended(self, t0: float) -> None:
        """Drop pods that ended by ``t0`` from the per-node recently-ended lists."""
        end = self.cols["end"]
        self.ended = [[p for p in pods if end[p] > t0] for pods in self.ended]

    def counts(self, t: float, n_nodes: int) -> dict[str, np.ndarray]:
        """Per node: ready, starting (scheduled, not ready), pending (unschedulable)."""
        c, n = self.cols, self.n
        node = c["node"][:n]
        live = c["end"][:n] > t
        ready = live & (c["ready"][:n] <= t)
        starting = live & (c["start"][:n] <= t) & ~ready
        pending = live & (c["start"][:n] > t)
        return {k: np.bincount(node[m], minlength=n_nodes) for k, m in
                (("ready", ready), ("starting", starting), ("pending", pending))}

    def cost(self, t0: float, t1: float) -> float:
        """Cost of every pod over ``[t0, t1)``: pod-seconds x (cores, GiB, GPU share) prices."""
        c, n = self.cols, self.n
        overlap = np.clip(np.minimum(c["end"][:n], t1) - np.maximum(c["start"][:n], t0), 0, None)
        return float((overlap * self.price_per_s()).sum())

    def price_per_s(self) -> np.ndarray:
        """Per pod, what it costs per second it lives (its share is already what it occupies
        under the sharing mode)."""
        c, n = self.cols, self.n
        return pod_price_per_hour(self.s.prices, cpu=c["cpu"][:n], memory_mb=c["mem"][:n],
                                  gpus=c["share"][:n]) / 3600.0

    def interference(self, t: float) -> np.ndarray:
        """Per pod, the MPS interference factor on its expert time: ``1 + beta x (the other
        pods' share of its GPU)``; 1 for CPU-only pods."""
        c, n, sim = self.cols, self.n, self.s.simulator
        share, gpu = c["share"][:n], c["gpu"][:n]
        alive = self._alive(t)
        on = alive[gpu[alive] >= 0]
        used = np.bincount(gpu[on], weights=share[on], minlength=max(self.gpus, 1)).astype(float)
        others = np.where(gpu >= 0, used[np.maximum(gpu, 0)] - share, 0.0)
        return 1 + sim.mps_interference * np.clip(others, 0, None)
