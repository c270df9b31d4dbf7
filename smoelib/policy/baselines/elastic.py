"""``elasticmoe``: instance-level elasticity as in ElasticMoE (arXiv 2510.02613), adapted.

The pipeline's experts form one expert-parallel instance on ``G`` GPUs, each cut into
``1 / gpu_share`` expert slots. The scale unit is one GPU. At every scale event the slots are
redistributed EPLB-style over the experts by their load (every expert keeps one slot; each
further slot goes to the largest load per slot). Scale-up is fast: ElasticMoE's P2P weight
transfer and zero-copy remapping are modelled as a short pod start (``scale_up_start_s``, a
simulator override this decider declares). When to scale is not in the paper's abstract, so a
reactive rule is declared here and tuned: add a GPU when the busiest slot's busy fraction
exceeds ``scale_up_utilization`` or the P95 exceeds ``scale_up_p95 x SLO``; remove one below
``scale_down_utilization`` with the P95 under 0.8 of that; at most one event per ``cooldown_s``.
"""

from __future__ import annotations

import math

import numpy as np

from smoelib.core.slo import slo_pressure
from smoelib.policy.base import register
from smoelib.policy.baselines.common import PASS_THROUGH, Experts, decide_all
from smoelib.policy.baselines.mmck import apportion_replicas
from smoelib.policy.baselines.platform import concurrency_of

__all__ = ["ElasticMoeDecider"]


@register("elasticmoe", guards="physical")
class ElasticMoeDecider:
    """See the module docstring. Units: GPUs, slots (replicas), seconds."""

    def __init__(self, *, dag, settings):
        self.ex, self.s, self.cfg = Experts(dag), settings, settings.baselines.elasticmoe
        self.slots_per_gpu = max(1, int(math.floor(1.0 / self.cfg.gpu_share + 1e-9)))
        self.simulator_overrides = {**PASS_THROUGH,
                                    "simulator.cold_start_median_s": self.cfg.scale_up_start_s,
                                    "simulator.cold_start_sigma": 0.0,
                                    "simulator.weights_load_mb_per_s": 1e6}
        self.min_gpus = math.ceil(len(self.ex) / self.slots_per_gpu)
        self.max_gpus = max(self.min_gpus, math.ceil(int(self.ex.rmax.sum())
                                                     / self.slots_per_gpu))

    def reset(self, seed: int) -> None:
        self.gpus = self.min_gpus
        self.last_event = -math.inf
        self.replicas = self._apportion(np.ones(len(self.ex)))

    def _apportion(self, load: np.ndarray) -> np.ndarray:
        ex = self.ex
        total = min(self.gpus * self.slots_per_gpu, int(ex.rmax.sum()))
        r = apportion_replicas(np.maximum(load, 1e-9), total,
                               minimum=np.maximum(ex.rmin, 1))
        return np.minimum(r, ex.rmax)

    def decide(self, obs):
        c, t, ex = self.cfg, float(obs.time_s), self.ex
        ready = np.maximum(np.asarray(obs.replicas_ready)[ex.index], 1)
        busy = concurrency_of(obs, ex.index)
        util = float((busy / ready).max(initial=0.0))
        ratio = slo_pressure(obs, slo=ex.slo)
        ratio = ratio if math.isfinite(ratio) else 0.0
        if t - self.last_event >= c.cooldown_s:
            step = 0
            if util > c.scale_up_utilization or ratio > c.scale_up_p95:
                step = 1
            elif util < c.scale_down_utilization and ratio < 0.8 * c.scale_up_p95:
                step = -1
            gpus = min(max(self.gpus + step, self.min_gpus), self.max_gpus)
            if gpus != self.gpus:
                self.gpus, self.last_event = gpus, t
                tps = np.asarray(obs.tokens_per_s)[ex.index]
                self.replicas = self._apportion(tps)
        return decide_all(ex, t, replicas=self.replicas, cpu=c.cpu,
                          memory_mb=ex.memory_floor(self.s), gpu_share=c.gpu_share,
                          concurrency=c.concurrency)
