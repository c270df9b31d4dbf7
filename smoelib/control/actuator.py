"""The production actuator: the scaler's decision store first, then the vertical backend.

Replica targets are what KEDA acts on every poll, so the decision is written to the store (and
its file) before the slower vertical patches are planned and sent; each part that fails is
reported in the feedback with its port named (``store``, ``vertical``) while the other still
applies. Nothing here raises for a failing API or disk.
"""

from __future__ import annotations

import logging
from typing import Any, Protocol

from smoelib.core.decisions import PipelineDecision
from smoelib.core.ports import Feedback

__all__ = ["ProductionActuator", "DecisionWriter", "VerticalPort"]

log = logging.getLogger("smoelib.control")


class DecisionWriter(Protocol):
    """What the actuator needs of the scaler's :class:`~smoelib.scaler.store.DecisionStore`."""

    def update(self, decision: PipelineDecision) -> Any: ...


class VerticalPort(Protocol):
    """What the actuator needs of the :class:`~smoelib.vertical.loop.VerticalLoop`."""

    def apply(self, decision: PipelineDecision, *, now: float, dry_run: bool = False
              ) -> Feedback: ...


class ProductionActuator:
    """Writes replica targets to ``store`` and hands the other knobs to ``vertical``.

    Args:
        store: the decision store the scaler answers KEDA from.
        vertical: the vertical loop, or None (replicas only).
        dry_run: decide and log only: no store update, no patch sent (the plan is logged).
    """

    def __init__(self, store: DecisionWriter, vertical: VerticalPort | None, *,
                 dry_run: bool = False):
        self.store = store
        self.vertical = vertical
        self.dry_run = dry_run

    def apply(self, decision: PipelineDecision, *, now: float) -> Feedback:
        failures: list[tuple[str, str]] = []
        if not self.dry_run:
            try:
                self.store.update(decision)
            except Exception as e:  # noqa: BLE001 - a full disk must not cost the vertical part
                failures.append(("store", f"{type(e).__name__}: {e}"))
        if self.vertical is None:
            return Feedback(failures=tuple(failures))
        try:
            fb = self.vertical.apply(decision, now=now, dry_run=self.dry_run)
        except Exception as e:  # noqa: BLE001 - a backend bug must not end the loop
            failures.append(("vertical", f"{type(e).__name__}: {e}"))
            return Feedback(failures=tuple(failures))
        return Feedback(notes=fb.notes, patches=fb.patches, rollouts=fb.rollouts,
                        failures=tuple(failures) + fb.failures)
