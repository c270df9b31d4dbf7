"""The KEDA + HPA path, vectorised over nodes: metric values in, Deployment replicas out.

Facts: ``shared/research/keda.md`` sections 2.5 (activation, cooldown) and 3 (HPA maths).
KEDA polls every ``pollingInterval``: an active trigger lifts a Deployment at 0 replicas to
``max(1, minReplicaCount)`` at once; an inactive one drops it to 0 after ``cooldownPeriod``
since it was last active. The HPA acts only on Deployments with at least one replica, every
sync period: ``ratio = usage / (target * current)``; inside ``[1 - tol, 1 + tol]`` it keeps the
current count, else proposes ``ceil(usage / target)``, clamped to ``[max(1, min), max]``; a
scale-down takes the highest proposal of the stabilisation window; a scale-up is capped per
period at ``max(start + pods, ceil(start * (1 + percent / 100)))`` where ``start`` is the count at
the beginning of the period. Scale-down policies (default 100 % per 15 s) are not limiting and
are not modelled. Pure: no clock, no randomness.
"""

from __future__ import annotations

from collections import deque
from dataclasses import asdict, dataclass

import numpy as np

from smoelib.core import keda
from smoelib.settings import Settings

__all__ = ["HpaBehaviour", "Autoscaler", "smoe_behaviour", "stock_behaviour",
           "keda_polling_s"]


@dataclass(frozen=True)
class HpaBehaviour:
    """HPA ``behavior`` and KEDA knobs. Units: seconds, pods, percent."""

    tolerance: float = 0.1
    scale_up_pods: int = 4
    scale_up_percent: float = 100.0
    scale_up_period_s: float = 15.0
    scale_down_window_s: float = 300.0
    cooldown_s: float = 300.0
    activation: float = 0.0


def smoe_behaviour(settings: Settings) -> HpaBehaviour:
    """What ``smoe manifests`` writes into every expert's ScaledObject, derived by the same
    functions: tolerance 0 where the cluster honours it (else the 10 % default), scale-up by
    ``max(scale_up_pods, 100 %)`` per ``manifests.hpa_period_s``, no scale-down window,
    ``cooldownPeriod`` of ``manifests.cooldown_ticks`` control ticks, activation at any load."""
    return HpaBehaviour(
        tolerance=0.0 if settings.cluster.hpa_configurable_tolerance else 0.1,
        scale_up_pods=keda.scale_up_pods(settings), scale_up_percent=100.0,
        scale_up_period_s=float(settings.manifests.hpa_period_s), scale_down_window_s=0.0,
        cooldown_s=float(keda.cooldown_period_s(settings)), activation=0.0)


def stock_behaviour(settings: Settings) -> HpaBehaviour:
    """The Kubernetes and KEDA defaults (``simulator.hpa_stock``)."""
    return HpaBehaviour(**asdict(settings.simulator.hpa_stock))


def keda_polling_s(settings: Settings) -> float:
    """KEDA's ``pollingInterval`` for the experts: the one ``smoe manifests`` writes."""
    return float(keda.polling_interval_s(settings))


class Autoscaler:
    """KEDA activation plus HPA maths for ``n`` Deployments at once.

    Args:
        min_replicas, max_replicas: per node (``minReplicaCount``, ``maxReplicaCount``).
        behaviour: one behaviour for every node of this instance.
        initial: the Deployments' replicas at time 0.
    """

    def __init__(self, min_replicas: np.ndarray, max_replicas: np.ndarray, *,
                 behaviour: HpaBehaviour, initial: np.ndarray):
        self.min = np.asarray(min_replicas, dtype=np.int64)
        self.max = np.asarray(max_replicas, dtype=np.int64)
        self.b = behaviour
        self.replicas = np.clip(np.asarray(initial, dtype=np.int64), self.min, self.max)
        self.last_active = np.zeros(self.min.size)
        # the Deployment was at ``initial`` before the episode: the window starts from it
        self._recs: deque[tuple[float, np.ndarray]] = deque([(0.0, self.replicas.copy())])
        self._ups: deque[tuple[float, np.ndarray]] = deque()

    @property
    def hpa_min(self) -> np.ndarray:
        return np.maximum(self.min, 1)

    def poll(self, t: float, value: np.ndarray) -> np.ndarray:
        """A KEDA poll at ``t`` with the trigger's metric ``value`` per node; returns replicas."""
        active = np.asarray(value) > self.b.activation
        self.last_active = np.where(active, t, self.last_active)
        lift = active & (self.replicas == 0)
        self.replicas = np.where(lift, self.hpa_min, self.replicas)
        idle = (~active & (self.replicas > 0) & (self.min == 0)
                & (t - self.last_active >= self.b.cooldown_s))
        self.replicas = np.where(idle, 0, self.replicas)
        return self.replicas

    def activate(self, t: float, mask: np.ndarray) -> np.ndarray:
        """An ``external-push`` StreamIsActive ``true``: activation at once for ``mask``."""
        self.last_active = np.where(mask, t, self.last_active)
        self.replicas = np.where(mask & (self.replicas == 0), self.hpa_min, self.replicas)
        return self.replicas

    def sync(self, t: float, usage: np.ndarray, *, target: float | np.ndarray = 1.0,
             per_pod: bool = True, base: np.ndarray | None = None) -> np.ndarray:
        """An HPA sync at ``t``; returns the new replicas.

        Args:
            usage: with ``per_pod`` (external metric, ``AverageValue`` target) the summed metric
                value; without it (resource utilisation), the mean utilisation over ``base``.
            target: the target value or utilisation.
            base: pods the utilisation is averaged over (default the current replicas).
        """
        cur = self.replicas
        usage = np.asarray(usage, dtype=float)
        if per_pod:
            ratio = usage / (target * np.maximum(cur, 1))
            proposal = np.ceil(usage / target - 1e-9)
        else:
            pods = cur if base is None else np.asarray(base)
            ratio = usage / target
            proposal = np.ceil(ratio * pods - 1e-9)
        within = np.abs(ratio - 1.0) <= self.b.tolerance + 1e-12
        rec = np.where(within, cur, proposal).astype(np.int64)
        rec = np.clip(rec, self.hpa_min, self.max)
        # scale-down stabilisation: the highest recommendation inside the window
        self._recs.append((t, rec))
        while len(self._recs) > 1 and self._recs[0][0] < t - self.b.scale_down_window_s:
            self._recs.popleft()
        stable = np.max(np.stack([r for _, r in self._recs]), axis=0)
        new = np.where(rec < cur, np.minimum(stable, cur), rec)
        # scale-up policies: relative to the count at the start of the period
        while self._ups and self._ups[0][0] <= t - self.b.scale_up_period_s:
            self._ups.popleft()
        added = sum((u for _, u in self._ups), np.zeros_like(cur))
        start = cur - added
        limit = np.maximum(start + self.b.scale_up_pods,
                           np.ceil(start * (1 + self.b.scale_up_percent / 100.0)))
        new = np.where(new > cur, np.minimum(new, np.maximum(limit, cur)), new)
        new = np.where(cur == 0, 0, new).astype(np.int64)  # the HPA is idle at 0 replicas
        self._ups.append((t, np.maximum(new - cur, 0)))
        self.replicas = new
        return new
