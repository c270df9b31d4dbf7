"""Platform autoscalers as deciders: ``hpa``, ``hpa-stock`` (KEDA + Kubernetes HPA), ``kpa``
(Knative) and ``openfaas`` (OpenFaaS Pro, capacity mode).

Each computes its own desired replicas per expert from the observed per-replica load with its
own algorithm and hands them to the simulator through the pass-through HPA preset
(:data:`~smoelib.policy.baselines.common.PASS_THROUGH`), so no behaviour is applied twice. The
vertical knobs are one static configuration for every expert (``settings.baselines.<name>
.vertical``), the best one ``smoe tune`` found. Facts: ``shared/research/keda.md`` 3,
``algorithms.md`` 4.1-4.3; what each models: docs/baselines.md.
"""

from __future__ import annotations

import math
from collections import deque

import numpy as np

from smoelib.policy.base import register
from smoelib.policy.baselines.common import PASS_THROUGH, Experts, decide_all, on_period
from smoelib.sim.autoscaling import (
    Autoscaler,
    keda_polling_s,
    smoe_behaviour,
    stock_behaviour,
)

__all__ = ["HpaDecider", "HpaStockDecider", "KpaDecider", "OpenFaasDecider", "concurrency_of"]


def concurrency_of(obs, index: np.ndarray) -> np.ndarray:
    """Average calls in flight per expert by Little's law: served calls/s x P50 latency (s),
    which is what Knative's queue-proxy and OpenFaaS's in-flight metric average to."""
    lat = np.nan_to_num(np.asarray(obs.latency_p50_ms)[index], nan=0.0) / 1000.0
    return np.asarray(obs.calls_per_s)[index] * lat


class _Static:
    """Shared parts: the experts, the static vertical configuration, the decision."""

    simulator_overrides = PASS_THROUGH

    def __init__(self, dag, settings, section):
        self.ex, self.s, self.cfg = Experts(dag), settings, section
        self.replicas = np.maximum(self.ex.rmin, 1)

    def _decision(self, t: float):
        v = self.cfg.vertical
        return decide_all(self.ex, t, replicas=np.clip(self.replicas, self.ex.rmin, self.ex.rmax),
                          cpu=v.cpu, memory_mb=v.memory_mb, gpu_share=v.gpu_share,
                          concurrency=v.concurrency)


class _Hpa(_Static):
    """KEDA's Prometheus scaler (metric summed over the expert's pods, ``AverageValue`` target
    per replica) plus the HPA maths of :class:`~smoelib.sim.autoscaling.Autoscaler`."""

    preset = "smoe"

    def __init__(self, *, dag, settings):
        name = "hpa" if self.preset == "smoe" else "hpa_stock"
        super().__init__(dag, settings, getattr(settings.baselines, name))
        self.behaviour = (smoe_behaviour(settings) if self.preset == "smoe"
                          else stock_behaviour(settings))
        self.keda_polling_s = keda_polling_s(settings)

    def reset(self, seed: int) -> None:
        self.hpa = Autoscaler(self.ex.rmin, self.ex.rmax, behaviour=self.behaviour,
                              initial=np.maximum(self.ex.rmin, 1))
        self.replicas = self.hpa.replicas

    def decide(self, obs):
        t, sim, idx = float(obs.time_s), self.s.simulator, self.ex.index
        rps = np.asarray(obs.calls_per_s)[idx] + np.asarray(obs.rejected_per_s)[idx]
        usage = rps if self.cfg.metric == "rps" else np.asarray(obs.inflight, float)[idx]
        if on_period(t, self.keda_polling_s):
            self.hpa.poll(t, rps)  # activation on any traffic
        if on_period(t, sim.hpa_sync_s):
            self.hpa.sync(t, usage, target=self.cfg.target)
        self.replicas = self.hpa.replicas
        return self._decision(t)


@register("hpa", guards="physical")
class HpaDecider(_Hpa):
    """``hpa``: with the behaviour sMoE's ScaledObjects set (tolerance 0, no window, wide)."""

    preset = "smoe"


@register("hpa-stock", guards="physical")
class HpaStockDecider(_Hpa):
    """``hpa-stock``: 15 s sync, 10 % tolerance, 300 s scale-down window, 4 pods or 100 %."""

    preset = "stock"


@register("kpa", guards="physical")
class KpaDecider(_Static):
    """Knative's KPA: stable and panic windows over the per-pod metric; panic starts when the
    panic-window pod count reaches ``panic_threshold`` x ready pods and ends one stable window
    after the last such tick; in panic the count never drops; scale to zero after the grace.
    """

    def __init__(self, *, dag, settings):
        super().__init__(dag, settings, settings.baselines.kpa)

    def reset(self, seed: int) -> None:
        c, dt = self.cfg, self.s.control.interval_s
        self.stable_n = max(1, round(c.stable_window_s / dt))
        self.panic_n = max(1, round(c.stable_window_s * c.panic_window_pct / 100.0 / dt))
        self.history: deque[np.ndarray] = deque(maxlen=self.stable_n)
        self.panic_since = np.full(len(self.ex), -math.inf)  # last over-threshold tick
        self.panicking = np.zeros(len(self.ex), bool)
        self.panic_max = np.zeros(len(self.ex))
        self.last_busy = np.zeros(len(self.ex))
        self.replicas = np.maximum(self.ex.rmin, 1)

    def decide(self, obs):
        c, t, idx = self.cfg, float(obs.time_s), self.ex.index
        value = (concurrency_of(obs, idx) if c.metric == "concurrency"
                 else np.asarray(obs.calls_per_s)[idx] + np.asarray(obs.rejected_per_s)[idx])
        self.history.append(value)
        hist = np.stack(self.history)
        stable, panic = hist.mean(0), hist[-self.panic_n:].mean(0)
        self.replicas = self.kpa_step(t, stable, panic, np.asarray(obs.replicas_ready)[idx])
        return self._decision(t)

    def kpa_step(self, t: float, stable: np.ndarray, panic: np.ndarray, ready: np.ndarray
                 ) -> np.ndarray:
        """One KPA tick: desired pods from the stable and panic averages (knative autoscaler).
        """
        c = self.cfg
        target = c.target * c.utilization
        ready = np.maximum(ready, 1)
        up = np.ceil(c.max_scale_up_rate * ready)
        down = np.floor(ready / c.max_scale_down_rate)
        dspc = np.clip(np.ceil(stable / target - 1e-9), down, up)
        dppc = np.clip(np.ceil(panic / target - 1e-9), down, up)
        over = dppc / ready >= c.panic_threshold
        self.panic_since = np.where(over, t, self.panic_since)
        self.panicking = over | (self.panicking & (t - self.panic_since < c.stable_window_s))
        self.panic_max = np.where(self.panicking, np.maximum(self.panic_max, dppc), 0)
        desired = np.where(self.panicking, self.panic_max, dspc)
        self.last_busy = np.where((stable > 0) | (panic > 0), t, self.last_busy)
        grace = (desired <= 0) & (t - self.last_busy < c.scale_to_zero_grace_s)
        desired = np.where(grace, np.maximum(desired, 1), desired)
        return np.clip(desired, self.ex.rmin, self.ex.rmax).astype(np.int64)


@register("openfaas", guards="physical")
class OpenFaasDecider(_Static):
    """OpenFaaS Pro's autoscaler: ``desired = ceil(load / (target x target_proportion))`` with
    ``load`` the expert's in-flight calls (capacity) or calls per second (rps), clamped to the
    expert's bounds (at least 1: scale to zero is a separate idle timeout, not used)."""

    def __init__(self, *, dag, settings):
        super().__init__(dag, settings, settings.baselines.openfaas)

    def reset(self, seed: int) -> None:
        self.replicas = np.maximum(self.ex.rmin, 1)

    def decide(self, obs):
        c, t, idx = self.cfg, float(obs.time_s), self.ex.index
        load = (concurrency_of(obs, idx) if c.mode == "capacity"
                else np.asarray(obs.calls_per_s)[idx] + np.asarray(obs.rejected_per_s)[idx])
        want = np.ceil(load / (c.target * c.target_proportion) - 1e-9)
        self.replicas = np.clip(want, np.maximum(self.ex.rmin, 1), self.ex.rmax).astype(np.int64)
        return self._decision(t)
