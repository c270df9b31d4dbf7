"""``faasconf``: a per-function configurator as in FaaSConf (ASE 2024), re-implemented from the
paper's description, with declared adaptations (docs/baselines.md).

One agent per expert with shared parameters. Its state: the expert's busy fraction per replica
and its call P95 against its layer's share of the SLO; a mean-field summary of its DAG
neighbours (the experts of its own and the adjacent MoE layers) weighted by attention
(softmax of state similarity) is mixed in with ``neighbour_weight``. The deterministic actor
sets replicas for ``target_utilization`` and steps the GPU share (the paper's CPU knob; CPU and
memory do not change a GPU expert's speed here and stay at their cheapest) up under latency
pressure and down with slack. The paper's offline-trained actor and critic are replaced by
this parametric actor whose parameters ``smoe tune`` fits on the training traces. Safe
exploration as in the paper: a library of configurations that met the SLO; a proposal whose
price leaves mean +- ``band_sigmas`` sigma of the library's prices is replaced by a library
entry plus Gaussian noise (seeded by ``reset``).
"""

from __future__ import annotations

import math

import numpy as np

from smoelib.core.accounting import price_per_hour
from smoelib.core.slo import slo_pressure
from smoelib.policy.base import register
from smoelib.policy.baselines.common import PASS_THROUGH, Experts, decide_all
from smoelib.policy.baselines.platform import concurrency_of

__all__ = ["FaasConfDecider"]

_LIBRARY = 64  # configurations remembered


@register("faasconf", guards="physical")
class FaasConfDecider:
    """See the module docstring."""

    simulator_overrides = PASS_THROUGH

    def __init__(self, *, dag, settings):
        self.ex, self.s, self.cfg = Experts(dag), settings, settings.baselines.faasconf
        self.shares = np.array(sorted(settings.actions.gpu_share), float)
        if settings.gpu_sharing.mode == "none":
            self.shares = np.zeros(1)
        layers = self.ex.layer
        self.neigh = (np.abs(layers[:, None] - layers[None, :]) <= 1) & ~np.eye(len(self.ex),
                                                                                dtype=bool)

    def reset(self, seed: int) -> None:
        self.rng = np.random.default_rng(seed)
        start = self.ex.default["gpu_share"]
        self.level = np.array([int(np.argmin(np.abs(self.shares - s))) for s in start])
        self.replicas = np.maximum(self.ex.rmin, 1)
        self.library: list[tuple[float, np.ndarray, np.ndarray]] = []

    def _mean_field(self, state: np.ndarray) -> np.ndarray:
        """Attention over neighbours: softmax of negative state distance, masked to the DAG."""
        d = -((state[:, None, :] - state[None, :, :]) ** 2).sum(-1)
        d = np.where(self.neigh, d, -np.inf)
        w = np.exp(d - d.max(axis=1, keepdims=True))
        w = np.where(self.neigh, w, 0.0)
        w /= np.maximum(w.sum(axis=1, keepdims=True), 1e-12)
        return w @ state

    def _price(self, level: np.ndarray, replicas: np.ndarray) -> float:
        a = self.s.actions
        return float((replicas * price_per_hour(self.s, cpu=min(a.cpu), memory_mb=min(
            a.memory_mb), gpu_share=self.shares[level])).sum())

    def decide(self, obs):
        c, ex, t = self.cfg, self.ex, float(obs.time_s)
        ready = np.maximum(np.asarray(obs.replicas_ready)[ex.index], 1)
        busy = concurrency_of(obs, ex.index)
        budget = ex.slo_ms / max(len(ex.layers), 1)
        lat = np.nan_to_num(np.asarray(obs.latency_p95_ms)[ex.index], nan=0.0) / budget
        state = np.stack([busy / ready, lat], axis=1)
        mixed = (1 - c.neighbour_weight) * state + c.neighbour_weight * self._mean_field(state)
        ratio = slo_pressure(obs, slo=ex.slo)
        ratio = ratio if math.isfinite(ratio) else 0.0
        if 0 < ratio <= 1.0:  # remember configurations that met the SLO
            self.library = (self.library + [(self._price(self.level, self.replicas),
                                             self.level.copy(), self.replicas.copy())])[-_LIBRARY:]
        pressure = mixed[:, 1] * (1 + 0.25 * (ratio > 1.0))
        step = np.where(pressure > 1.0, np.ceil(c.latency_gain * (pressure - 1.0) + 1e-9), 0)
        step = np.where(pressure < 0.5, -1, step)
        level = np.clip(self.level + step.astype(int), 0, self.shares.size - 1)
        replicas = np.clip(np.ceil(busy / c.target_utilization - 1e-9),
                           np.maximum(ex.rmin, 1), ex.rmax).astype(np.int64)
        if len(self.library) >= 8:
            prices = np.array([p for p, _, _ in self.library])
            mean, sd = prices.mean(), prices.std()
            price = self._price(level, replicas)
            if abs(price - mean) > c.band_sigmas * sd + 1e-12:
                _, lv, rp = self.library[int(self.rng.integers(len(self.library)))]
                noise = self.rng.normal(0.0, c.noise, size=(2, len(ex)))
                level = np.clip(np.rint(lv + noise[0] * (self.shares.size - 1)), 0,
                                self.shares.size - 1).astype(int)
                replicas = np.clip(np.rint(rp + noise[1] * ex.rmax), np.maximum(ex.rmin, 1),
                                   ex.rmax).astype(np.int64)
        self.level, self.replicas = level, replicas
        return decide_all(ex, t, replicas=replicas, cpu=min(self.s.actions.cpu),
                          memory_mb=self.ex.memory_floor(self.s),
                          gpu_share=self.shares[level], concurrency=c.concurrency)
