"""Slow knobs: hysteresis, a change threshold and a rollout budget. Pure.

A slow knob is one whose change replaces the function's pods: GPU share and ``max_inflight``
always (read once at process start); CPU and memory too where the cluster has no in-place
resize or the writer is the OpenFaaS gateway. A slow knob of an expert changes only when

Memory is slow only when it goes down where the cluster cannot lower a memory limit in place
(Kubernetes before 1.35: ``cluster.in_place_memory_decrease``).

1. the new value differs from the reference (the last decision's) by more than
   ``guards.slow_knob_threshold`` (relative),
2. it has been proposed for ``guards.hysteresis_ticks`` ticks in a row, and
3. the pods the change replaces (the expert's replicas) fit the pipeline's rollout budget of
   ``guards.rollout_budget_per_min`` pods in the last 60 s, counted from what the actuator
   reported it rolled (:meth:`SlowKnobMemory.record`). An expert with more replicas than the
   whole budget may roll alone in an otherwise empty minute, or it could never change.

Until then the knob keeps the reference value, so the actuator (and the vertical planner behind
it, including its retries) never sees a held change. These rules belong to the control loop;
``smoe plan`` applies an operator's decision as given.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from operator import attrgetter
from types import MappingProxyType
from typing import Any

from smoelib.core.decisions import ExpertDecision
from smoelib.core.knobs import RESOURCE_KNOBS, SLOW_KNOBS

__all__ = ["SlowKnobRules", "SlowKnobMemory", "hold_slow_knobs", "WINDOW_S"]

WINDOW_S = 60.0
"""The rollout budget's window, seconds."""


@dataclass(frozen=True, slots=True)
class SlowKnobRules:
    """``knobs`` that roll pods; ``hysteresis_ticks`` ticks; ``threshold`` relative change
    (fraction); ``budget_per_min`` pods replaced per minute per pipeline."""

    knobs: tuple[str, ...] = SLOW_KNOBS
    decreases: tuple[str, ...] = ()
    """knobs slow only when they go down (memory before Kubernetes 1.35: a lower memory limit
    is refused in place, so it rolls pods)"""
    hysteresis_ticks: int = 3
    threshold: float = 0.2
    budget_per_min: int = 4

    @classmethod
    def from_settings(cls, settings: Any) -> SlowKnobRules:
        """The rules of ``settings.guards``; which knobs roll pods follows the cluster (in-place
        resize), the vertical backend (the gateway always rolls) and the GPU sharing mode."""
        g = settings.guards
        knobs, decreases = SLOW_KNOBS, ()
        if not settings.cluster.in_place_resize or settings.vertical.backend == "openfaas-gateway":
            knobs += RESOURCE_KNOBS
        elif not settings.cluster.in_place_memory_decrease:
            decreases = ("memory_mb",)
        return cls(knobs=knobs, decreases=decreases, hysteresis_ticks=g.hysteresis_ticks,
                   threshold=g.slow_knob_threshold, budget_per_min=g.rollout_budget_per_min)


@dataclass(frozen=True, slots=True)
class SlowKnobMemory:
    """What the rules remember between ticks: candidate values with the ticks they have been
    proposed in a row (``(node, knob) -> (value, ticks)``), and the rollouts of the last minute
    as the actuator reported them (``(seconds, pods replaced)``)."""

    candidates: Mapping[tuple[str, str], tuple[float, int]] = field(
        default_factory=lambda: MappingProxyType({}))
    rollouts: tuple[tuple[float, int], ...] = ()

    def record(self, rollouts: Any, *, now: float) -> SlowKnobMemory:
        """Add what the actuator rolled at ``now``: ``(function, pods replaced)`` pairs."""
        added = tuple((now, int(pods)) for _, pods in rollouts)
        return replace(self, rollouts=self.window(now) + added)

    def window(self, now: float) -> tuple[tuple[float, int], ...]:
        """The rollouts still inside the budget's window at ``now``."""
        return tuple(r for r in self.rollouts if now - r[0] < WINDOW_S)


def hold_slow_knobs(experts: Mapping[str, ExpertDecision],
                    reference: Mapping[str, ExpertDecision], memory: SlowKnobMemory, *,
                    rules: SlowKnobRules, pods: Mapping[str, int], now: float
                    ) -> tuple[dict[str, ExpertDecision], SlowKnobMemory, list[tuple[str, str]]]:
    """Hold every slow-knob change the rules do not allow yet.

    Args:
        experts: the proposal (node id -> knobs), already within bounds.
        reference: what the cluster was last told (the last decision, or the observed
            configuration before the first one); experts without a reference pass unchanged.
        memory: from the last tick.
        rules: see :class:`SlowKnobRules`.
        pods: per expert, the pods a rollout would replace now (its Deployment's replicas).
        now: seconds on the loop's clock.

    Returns:
        the experts with held knobs set back to the reference, the new memory and a
        ``(rule, note)`` per held change (rule ``hysteresis`` or ``budget``).
    """
    candidates = dict(memory.candidates)
    pending = {node for node, _ in candidates}  # experts with a candidate value remembered
    names = rules.knobs + rules.decreases
    values = attrgetter(*names) if len(names) > 1 else lambda e: tuple(
        getattr(e, n) for n in names)  # always a tuple of the knobs' values
    decreases = frozenset(rules.decreases)
    threshold, ticks_needed = rules.threshold, rules.hysteresis_ticks
    used = sum(p for _, p in memory.window(now))
    budget = rules.budget_per_min
    out: dict[str, ExpertDecision] = {}
    notes: list[tuple[str, str]] = []
    for node, want in experts.items():
        have = reference.get(node)
        if have is None:
            out[node] = want
            continue
        new_values, old_values = values(want), values(have)
        if node not in pending and new_values == old_values:
            out[node] = want  # no slow knob changes and nothing to forget
            continue
        held: dict[str, Any] = {}
        ready: list[str] = []
        for knob, new, old in zip(names, new_values, old_values, strict=True):
            key = (node, knob)
            if new == old or (new > old and knob in decreases):
                candidates.pop(key, None)
                continue
            if abs(new - old) <= threshold * abs(old):
                candidates.pop(key, None)
                held[knob] = old
                notes.append(("hysteresis", f"{node}: {knob} {old:g} -> {new:g} is within the "
                             f"{threshold:.0%} threshold; held"))
                continue
            value, ticks = candidates.get(key, (None, 0))
            ticks = ticks + 1 if value == new else 1
            candidates[key] = (new, ticks)
            if ticks < ticks_needed:
                held[knob] = old
                notes.append(("hysteresis", f"{node}: {knob} {old:g} -> {new:g} seen {ticks}/"
                                            f"{ticks_needed} ticks; held"))
            else:
                ready.append(knob)
        if ready:
            need = max(0, int(pods.get(node, 0)))
            if used + need <= budget or (used == 0 and budget > 0):
                used += need
                for knob in ready:  # allowed: the next reference holds the new value
                    candidates.pop((node, knob), None)
            else:
                for knob in ready:
                    held[knob] = getattr(have, knob)
                notes.append(("budget", f"{node}: rollout of {need} pod(s) for "
                                        f"{', '.join(ready)} waits for the budget ({used}/"
                                        f"{budget} pods this minute)"))
        out[node] = want.with_knobs(**held) if held else want
    return out, SlowKnobMemory(MappingProxyType(candidates), memory.window(now)), notes
