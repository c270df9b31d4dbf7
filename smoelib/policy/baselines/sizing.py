"""The queueing-theory sizer: cheapest (GPU share, concurrency, replicas) per expert that meets
its share of the SLO, under the simulator's dispatch model.

Per expert ``e`` with forecast call rate ``lam`` and tokens per call ``tok``: calls are spread at
random over ``R`` replicas, each an M/M/c/K queue (``c`` = parallelism, ``K`` = concurrency) at
``lam / R``; the service time is the simulator's (``common.service_ms``, GPU assumed full). A
candidate is feasible when its 429 probability is at most ``max_block`` and the call's tail
latency (service at the ``1 - tail`` quantile of its noise, plus the exponential-tail wait
quantile scaled by Allen-Cunneen's ``(ca^2 + cs^2) / 2``; for a pipeline that decodes, whose
budget is TPOT, a request's mean over its decode passes: the mean call latency, service plus
the scaled mean wait) fits the expert's layer budget. The
budget is ``slo_fraction x SLO`` minus the segments and hops on the critical path, split across
the MoE layers in proportion to their token load. CPU and memory do not change a GPU expert's
service time in the model, so the cheapest choices are taken; CPU-only pipelines choose cores
instead of GPU share. When the cluster's GPUs cannot hold the result, each layer's replicas are
apportioned EPLB-style (:func:`~smoelib.policy.baselines.mmck.apportion_replicas`).
"""

from __future__ import annotations

from statistics import NormalDist

import numpy as np

from smoelib.core.accounting import price_per_hour
from smoelib.core.service import service_models
from smoelib.policy.baselines.common import Experts, service_ms
from smoelib.policy.baselines.mmck import apportion_replicas, mmck_batch, wait_quantile
from smoelib.sim.engine import StagePlan

__all__ = ["QueueingSizer", "Plan"]


class Plan:
    """Per expert: ``replicas``, ``gpu_share``, ``cpu``, ``memory_mb``, ``concurrency`` arrays
    and ``feasible`` (some candidate met the budget)."""

    def __init__(self, **arrays: np.ndarray):
        self.__dict__.update(arrays)


class QueueingSizer:
    """Sizes every expert of a pipeline at once.

    Args:
        dag: the pipeline.
        settings: the settings tree (actions, prices, simulator model, cluster GPUs).
        cfg: ``settings.baselines.queueing`` or ``settings.baselines.hindsight``.
    """

    def __init__(self, dag, settings, cfg):
        self.ex, self.s, self.cfg = Experts(dag), settings, cfg
        a = settings.actions
        cpu_only = settings.gpu_sharing.mode == "none"
        shares = [0.0] if cpu_only else list(a.gpu_share)
        cpus = list(a.cpu)  # the handler runs on the pod's CPU, GPU experts included
        # equal prices: the larger concurrency first (fewer 429s for the same money)
        grid = [(sh, cp, k) for sh in shares for cp in cpus
                for k in sorted(a.concurrency, reverse=True)]
        self.share = np.array([g[0] for g in grid])
        self.cpu = np.array([g[1] for g in grid])
        self.conc = np.array([g[2] for g in grid], dtype=np.int64)
        self.memory_mb = self.ex.memory_floor(settings)  # per expert: runtime + weights
        self.price = price_per_hour(settings, cpu=self.cpu[None, :],
                                    memory_mb=self.memory_mb[:, None],
                                    gpu_share=self.share[None, :])  # (experts, candidates)
        self.r = np.arange(1, int(self.ex.rmax.max()) + 1)
        sim = settings.simulator
        self.z = NormalDist().inv_cdf(1.0 - cfg.tail)
        self.burst = (cfg.arrival_scv + sim.service_cv ** 2) / 2.0
        # a decoder's budget is TPOT, a request's mean over its decode passes: the mean call
        # latency is what adds up in it; an encoder's TTFT is one pass: the per-call tail
        self.mean = bool(dag.decodes)
        self._path(dag)
        self.segment_floor_ms = self._segment_floor(dag, settings)
        # the GPUs the experts may use: the cluster's less what the segments hold at their
        # least replicas (fixed per DAG)
        held = sum(dag.spec(v).replicas_min * dag.spec(v).gpu_share for v in dag.segments)
        self.expert_gpus = max(float(settings.cluster.gpus) - held, 0.0)

    def _path(self, dag) -> None:
        """Segments and MoE layers on the longest stage path (the critical path)."""
        plan = StagePlan(dag)
        best: list[tuple[int, list[int]]] = []
        for i in range(len(plan.stages)):
            prev = max((best[p] for p in plan.preds[i]), default=(0, []), key=lambda x: x[0])
            best.append((prev[0] + 1, prev[1] + [i]))
        hops, path = max((best[i] for i in plan.sinks), key=lambda x: x[0])
        self.hops = hops
        self.path_segments = np.array([plan.nodes[i][0] for i in path if not plan.moe[i]],
                                      dtype=np.int64)
        self.path_layers = [plan.layer_of[i] for i in path if plan.moe[i]]

    def _segment_floor(self, dag, settings) -> np.ndarray:
        """Per segment on the critical path, one call's time at no load at its default
        configuration (one token: a decode pass; an encoder's segments barely depend on the
        tokens): what the hindsight sizers subtract from the budget, which decide before any
        segment latency is observed."""
        models = service_models(dag, settings)
        out = []
        for node in self.path_segments:
            spec = dag.spec(dag.nodes[node])
            out.append(float(models[node].batch_ms(1, 1.0, cpu=spec.cpu, share=spec.gpu_share,
                                                   parallelism=max(spec.parallelism, 1))))
        return np.asarray(out)

    # ---- budgets -------------------------------------------------------------------------
    def budgets(self, *, tokens_per_s: np.ndarray, segment_ms: np.ndarray) -> np.ndarray:
        """Per expert budget (ms): the MoE share of ``slo_fraction x SLO`` after the critical
        path's segments (``segment_ms`` per segment on it) and hops, split across the path's
        layers by token load; layers off the path get the largest layer budget."""
        ex, sim = self.ex, self.s.simulator
        moe = self.cfg.slo_fraction * ex.slo_ms - float(np.sum(segment_ms)) \
            - self.hops * sim.rpc_overhead_ms
        load = np.array([tokens_per_s[m].sum() for m in ex.layers]) + 1e-9
        on = np.zeros(len(ex.layers), bool)
        on[self.path_layers] = True
        share = np.where(on, load / load[on].sum(), 0.0) if on.any() else load / load.sum()
        per_layer = np.maximum(moe, 0.0) * share
        per_layer[~on] = per_layer.max(initial=0.0)
        return per_layer[ex.layer]

    # ---- sizing --------------------------------------------------------------------------
    def tail_ms(self, lam: np.ndarray, tokens: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Tail latency (ms) and 429 probability of every (expert, candidate, replicas):
        shapes ``(experts, candidates, len(self.r))``."""
        ex, sim = self.ex, self.s.simulator
        svc = service_ms(ex, self.s, tokens=np.asarray(tokens)[:, None],
                         gpu_share=self.share[None, :], cpu=self.cpu[None, :])  # (E, C)
        mu = 1000.0 / svc
        lam_r = np.asarray(lam, float)[:, None, None] / self.r[None, None, :]
        out_t = np.empty(lam_r.shape[:1] + (self.share.size, self.r.size))
        out_b = np.empty_like(out_t)
        for c in np.unique(ex.parallelism):
            m = ex.parallelism == c
            q = mmck_batch(lam_r[m], mu[m][:, :, None], int(c), self.conc[None, :, None])
            if self.mean:
                out_t[m] = svc[m][:, :, None] + q["mean_wait"] * self.burst * 1000.0
            else:
                wait = wait_quantile(q["p_wait"], q["mean_wait"], self.cfg.tail) * self.burst
                out_t[m] = svc[m][:, :, None] * (1 + self.z * sim.service_cv) + wait * 1000.0
            out_b[m] = q["p_block"]
        return out_t, out_b

    def plan(self, lam: np.ndarray, tokens: np.ndarray, budget_ms: np.ndarray, *,
             keep: np.ndarray | None = None, tail: tuple | None = None) -> Plan:
        """The cheapest feasible candidate and replicas per expert.

        Args:
            lam: forecast calls per second per expert.
            tokens: tokens per call per expert.
            budget_ms: per expert latency budget.
            keep: per expert a candidate index to stay on (-1: free choice).
            tail: ``tail_ms(lam, tokens)`` if already computed.
        """
        ex = self.ex
        t, block = tail if tail is not None else self.tail_ms(lam, tokens)
        ok = (t <= budget_ms[:, None, None]) & (block <= self.cfg.max_block)
        ok &= (self.r[None, None, :] >= ex.rmin[:, None, None])
        ok &= (self.r[None, None, :] <= ex.rmax[:, None, None])
        cost = self.price[:, :, None] * self.r[None, None, :]
        cost = np.where(ok, cost, np.inf)
        if keep is not None:
            cost = np.where((keep[:, None, None] >= 0)
                            & (np.arange(self.share.size)[None, :, None] != keep[:, None, None]),
                            np.inf, cost)
        flat = cost.reshape(len(ex), -1)
        best = flat.argmin(axis=1)
        feasible = np.isfinite(flat[np.arange(len(ex)), best])
        # infeasible: the fastest candidate that refuses at most max_block of its calls (the
        # fewest refusals if none does) at the most replicas the expert may have, among the GPU
        # shares at which every loaded expert keeps a replica on the GPUs the segments leave
        # (the fastest of all, a whole GPU each and one call in flight, fits no layer-wide
        # shortfall: the capacity guard then leaves experts without replicas, and the rest
        # refuse their calls)
        loaded = max(1, int(((np.asarray(lam) > 0) | (ex.rmin > 0)).sum()))
        fits = self.share <= max(self.expert_gpus / loaded, float(self.share.min()))
        allowed = (self.r[None, None, :] <= ex.rmax[:, None, None]) & fits[None, :, None]
        blocked = np.where(allowed, block, np.inf).reshape(len(ex), -1)
        least = np.maximum(blocked.min(axis=1), self.cfg.max_block)
        t_max = np.where(allowed & (block <= least[:, None, None]), t, np.inf)
        fallback = t_max.reshape(len(ex), -1).argmin(axis=1)
        best = np.where(feasible, best, fallback)
        cand, r_i = np.unravel_index(best, cost.shape[1:])
        replicas = np.where(np.asarray(lam) > 0, self.r[r_i], ex.rmin)
        replicas = np.where(feasible, replicas, np.maximum(ex.rmax, 1))
        return self._fit_gpus(Plan(replicas=replicas.astype(np.int64),
                                   gpu_share=self.share[cand], cpu=self.cpu[cand],
                                   memory_mb=self.memory_mb.copy(),
                                   concurrency=self.conc[cand], candidate=cand,
                                   feasible=feasible), lam)

    def _fit_gpus(self, plan: Plan, lam: np.ndarray) -> Plan:
        """EPLB apportionment of each layer's replicas when the GPUs cannot hold the plan."""
        demand = float((plan.replicas * plan.gpu_share).sum())
        capacity = self.expert_gpus
        if self.s.gpu_sharing.mode != "mps-env" or demand <= capacity + 1e-9:
            return plan
        scale = capacity / demand
        out = plan.replicas.copy()
        for members in self.ex.layers:
            floor = np.maximum(self.ex.rmin[members], np.asarray(lam)[members] > 0)
            total = max(int(floor.sum()), int(plan.replicas[members].sum() * scale))
            out[members] = apportion_replicas(np.asarray(lam)[members] + 1e-12, total,
                                              minimum=floor.astype(int))
        plan.replicas = out
        return plan
