"""What sMoE's ScaledObjects ask of KEDA and the HPA, derived from the settings. Pure.

One place for these rules: ``smoe manifests`` writes them into every expert's ScaledObject and
the simulator models exactly what they say (docs/simulator.md), so the two cannot disagree.
"""

from __future__ import annotations

import math

from smoelib.pipeline.model import NodeSpec
from smoelib.settings import Settings

__all__ = ["polling_interval_s", "cooldown_period_s", "scale_up_pods", "fallback_replicas"]


def polling_interval_s(settings: Settings) -> int:
    """KEDA ``pollingInterval``: the control interval rounded up to whole seconds (>= 1)."""
    return max(1, math.ceil(settings.control.interval_s))


def cooldown_period_s(settings: Settings) -> int:
    """KEDA ``cooldownPeriod``: ``manifests.cooldown_ticks`` control intervals, in seconds."""
    return max(1, math.ceil(settings.manifests.cooldown_ticks * settings.control.interval_s))


def scale_up_pods(settings: Settings) -> int:
    """Pods the HPA may add per ``hpa_period_s``: the largest step per tick, every tick.

    The larger of the policy's proposal limit and the guards' cap, times the control ticks that
    fit in one HPA period (rounded up), so the HPA never clips a step the guards allowed.
    """
    step = max(settings.actions.max_replica_step, settings.guards.max_step_up)
    ticks = math.ceil(settings.manifests.hpa_period_s / settings.control.interval_s)
    return step * max(1, ticks)


def fallback_replicas(spec: NodeSpec, settings: Settings) -> int:
    """The floor KEDA holds an expert at while the scaler fails (replicas, within max).

    The ScaledObject uses fallback behavior ``currentReplicasIfHigher``: an outage never scales
    an expert down or to zero, and never below this floor.
    """
    floor = math.ceil(settings.manifests.fallback_fraction * spec.replicas_max)
    return min(spec.replicas_max, max(spec.replicas_min, 1, floor))
