"""The port every vertical backend implements, and the loop that applies a plan through it.

:func:`apply_plan` sends patches in order. A 409 (or a JSON patch whose ``test`` failed: the
object changed under us) re-reads that function and re-plans it, at most ``conflict_retries``
times; a 403 or 404 is reported with the object named while the rest of the plan still applies.
After in-place resizes it asks the backend which functions have a resize stuck
(``PodResizePending``) and re-plans those, which falls back to a rollout.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Literal, Protocol

from smoelib.errors import PermanentError, TransientError
from smoelib.vertical.planner import Plan
from smoelib.vertical.records import Patch, PipelineState

__all__ = ["Backend", "ConflictError", "Outcome", "ApplyReport", "apply_plan"]


class ConflictError(TransientError):
    """The object changed since it was read (409, or a failed JSON patch ``test``)."""


class Backend(Protocol):
    """One writer of a pipeline's functions."""

    def read_state(self, pipeline: str, namespace: str, functions: Sequence[str]
                   ) -> PipelineState:
        """The live state of ``functions``; one that cannot be read is named in ``missing``."""

    def apply(self, patch: Patch) -> None:
        """Send one patch. Raises ConflictError, PermanentError (403, 404, refused) or
        TransientError (timeouts, 5xx)."""

    def stuck_resizes(self, pods: Sequence[Patch], timeout_s: float) -> set[str]:
        """Functions whose resized pods report ``PodResizePending`` within ``timeout_s``."""


@dataclass(frozen=True, slots=True)
class Outcome:
    """What happened to one patch."""

    patch: Patch
    status: Literal["applied", "failed"]
    message: str = ""


@dataclass(frozen=True, slots=True)
class ApplyReport:
    outcomes: tuple[Outcome, ...]
    notes: tuple[str, ...] = ()

    @property
    def failed(self) -> tuple[Outcome, ...]:
        return tuple(o for o in self.outcomes if o.status == "failed")


def apply_plan(plan: Plan, backend: Backend, *, replan: Callable[[frozenset[str]], Plan],
               conflict_retries: int, resize_watch_s: float) -> ApplyReport:
    """Apply ``plan`` through ``backend``; ``replan(functions)`` re-reads and re-plans them."""
    outcomes: list[Outcome] = []
    notes: list[str] = list(plan.notes)
    conflicts: dict[str, int] = {}
    resized = _apply_all(plan.patches, backend, replan, conflict_retries, conflicts, outcomes,
                         notes)
    if resized and resize_watch_s > 0:
        stuck = backend.stuck_resizes(resized, resize_watch_s)
        if stuck:
            fallback = replan(frozenset(stuck))
            notes += fallback.notes
            _apply_all(fallback.patches, backend, replan, conflict_retries, conflicts, outcomes,
                       notes)
    return ApplyReport(tuple(outcomes), tuple(dict.fromkeys(notes)))


def _apply_all(patches: Iterable[Patch], backend: Backend,
               replan: Callable[[frozenset[str]], Plan], retries: int,
               conflicts: dict[str, int], outcomes: list[Outcome], notes: list[str]
               ) -> list[Patch]:
    queue = list(patches)
    resized: list[Patch] = []
    while queue:
        patch = queue.pop(0)
        try:
            backend.apply(patch)
        except ConflictError as e:
            conflicts[patch.function] = conflicts.get(patch.function, 0) + 1
            if conflicts[patch.function] > retries:
                outcomes.append(Outcome(patch, "failed", f"{patch.target}: still conflicting "
                                        f"after {retries} re-reads: {e}"))
                queue = [p for p in queue if p.function != patch.function]
                continue
            fresh = replan(frozenset({patch.function}))
            notes += fresh.notes
            queue = [p for p in fresh.patches if p.function == patch.function] + [
                p for p in queue if p.function != patch.function]
            continue
        except (PermanentError, TransientError) as e:
            outcomes.append(Outcome(patch, "failed", str(e)))
            if patch.rollout:  # no pause for a rollout that did not start
                queue = [p for p in queue if not (p.function == patch.function
                                                  and p.target.kind == "ScaledObject")]
            continue
        outcomes.append(Outcome(patch, "applied"))
        if patch.subresource == "resize" and patch.target.kind == "Pod":
            resized.append(patch)
    return resized
