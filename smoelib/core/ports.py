"""The ports of the control loop: where observations come from, who decides, who acts.

Each is a small protocol; the controller, ``smoe evaluate``, the training rollouts, ``smoe
simulate`` and ``smoe demo`` plug different implementations into the same tick
(:mod:`smoelib.core.tick`):

- :class:`MetricsSource`: Prometheus (:class:`smoelib.control.metrics.PrometheusSource`), or
  the simulator;
- :class:`Decider`: a policy (the registry in :mod:`smoelib.policy.base`);
- :class:`Actuator`: production (the scaler's decision store, then the vertical backend:
  :class:`smoelib.control.actuator.ProductionActuator`) or simulated (the simulator behind the
  same vertical planner: :class:`smoelib.sim.actuator.SimActuator`). It reports what it did
  as :class:`Feedback`, which the next tick reads (the rollouts it started count against the
  rollout budget).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from smoelib.core.decisions import PipelineDecision
from smoelib.core.observation import Observation

__all__ = ["MetricsSource", "Decider", "Actuator", "Feedback"]


class MetricsSource(Protocol):
    """Produces one :class:`Observation` of a pipeline per call."""

    def fetch(self, now: float) -> Observation:
        """The pipeline as of ``now`` (seconds on the loop's clock). Raises
        :class:`~smoelib.errors.TransientError` when unavailable, or
        :class:`~smoelib.errors.PermanentError` when misconfigured."""
        ...


@runtime_checkable
class Decider(Protocol):
    """Decides every expert's knobs from one observation. Pure given its seed."""

    def reset(self, seed: int) -> None:
        """Start an episode: clear history, seed any randomness."""

    def decide(self, observation: Any) -> PipelineDecision:
        """One decision for the tick the observation describes."""


@dataclass(frozen=True)
class Feedback:
    """What an actuator did with one decision.

    ``notes``: what it changed or left alone and why; ``patches``: patches planned;
    ``rollouts``: ``(function, pods replaced)`` of every rollout it started; ``failures``:
    ``(port, message)`` for each part that failed (``store``, ``vertical``), the rest having
    been applied."""

    notes: tuple[str, ...] = ()
    patches: int = 0
    rollouts: tuple[tuple[str, int], ...] = ()
    failures: tuple[tuple[str, str], ...] = ()


class Actuator(Protocol):
    """Receives the guarded decision of every tick."""

    def apply(self, decision: PipelineDecision, *, now: float) -> Feedback:
        """Apply ``decision`` at ``now`` (seconds on the loop's clock). Failures of its parts
        are reported in the feedback, never raised for a failing API."""
        ...
