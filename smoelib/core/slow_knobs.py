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

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from operator import attrgetter
from typing import Any

import numpy as np

from smoelib.core.decisions import ExpertDecision
from smoelib.core.knobs import KNOB_NAMES, KNOBS, RESOURCE_KNOBS, SLOW_KNOBS

__all__ = ["SlowKnobRules", "SlowKnobMemory", "hold_slow_knobs", "WINDOW_S"]

_KNOB_INDEX = {k: i for i, k in enumerate(KNOB_NAMES)}
_KIND = {k.name: k.kind for k in KNOBS}

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
    """What the rules remember between ticks: per expert (``nodes``) and knob (``knobs``) the
    candidate value proposed and the ticks it has been proposed in a row (``values`` and
    ``ticks``, arrays of ``(len(nodes), len(knobs))``; 0 ticks: no candidate), and the
    rollouts of the last minute as the actuator reported them (``(seconds, pods replaced)``).
    Columns, not a dict: at deepseek-v3 size every expert has a candidate."""

    nodes: tuple[str, ...] = ()
    knobs: tuple[str, ...] = ()
    values: np.ndarray = field(default_factory=lambda: np.zeros((0, 0)), compare=False,
                               repr=False)
    ticks: np.ndarray = field(default_factory=lambda: np.zeros((0, 0), np.int64),
                              compare=False, repr=False)
    rollouts: tuple[tuple[float, int], ...] = ()

    @property
    def candidates(self) -> dict[tuple[str, str], tuple[float, int]]:
        """``(node, knob) -> (value, ticks)`` of every remembered candidate."""
        rows, cols = np.nonzero(self.ticks > 0)
        return {(self.nodes[i], self.knobs[j]): (float(self.values[i, j]), int(self.ticks[i, j]))
                for i, j in zip(rows.tolist(), cols.tolist(), strict=True)}

    def record(self, rollouts: Any, *, now: float) -> SlowKnobMemory:
        """Add what the actuator rolled at ``now``: ``(function, pods replaced)`` pairs."""
        added = tuple((now, int(pods)) for _, pods in rollouts)
        return replace(self, rollouts=self.window(now) + added)

    def window(self, now: float) -> tuple[tuple[float, int], ...]:
        """The rollouts still inside the budget's window at ``now``."""
        return tuple(r for r in self.rollouts if now - r[0] < WINDOW_S)

    def aligned(self, nodes: Sequence[str], knobs: tuple[str, ...]
                ) -> tuple[np.ndarray, np.ndarray]:
        """The candidates' values (NaN: none) and ticks as rows ``nodes`` and columns
        ``knobs`` (copies)."""
        values = np.full((len(nodes), len(knobs)), np.nan)
        ticks = np.zeros((len(nodes), len(knobs)), np.int64)
        if not self.nodes:
            return values, ticks
        if self.knobs == knobs and self.nodes == tuple(nodes):
            return self.values.copy(), self.ticks.copy()  # the common case: the same experts
        row = {n: i for i, n in enumerate(self.nodes)}
        mine = [row.get(n, -1) for n in nodes]
        at = np.array([i for i in mine if i >= 0], np.int64)
        to = np.array([k for k, i in enumerate(mine) if i >= 0], np.int64)
        for j, knob in enumerate(knobs):
            if knob in self.knobs and at.size:
                values[to, j] = self.values[at, self.knobs.index(knob)]
                ticks[to, j] = self.ticks[at, self.knobs.index(knob)]
        return values, ticks

    def others(self, nodes: Sequence[str]) -> SlowKnobMemory:
        """The rows of experts not in ``nodes`` that hold a candidate."""
        skip = set(nodes)
        keep = [i for i, n in enumerate(self.nodes) if n not in skip and self.ticks[i].any()]
        return SlowKnobMemory(tuple(self.nodes[i] for i in keep), self.knobs,
                              self.values[keep], self.ticks[keep]) if keep else SlowKnobMemory()


def hold_slow_knobs(experts: Mapping[str, ExpertDecision],
                    reference: Mapping[str, ExpertDecision], memory: SlowKnobMemory, *,
                    rules: SlowKnobRules, pods: Mapping[str, int], now: float
                    ) -> tuple[dict[str, ExpertDecision], SlowKnobMemory, list[tuple[str, str]]]:
    """Hold every slow-knob change the rules do not allow yet.

    Args:
        experts: the proposal (node id -> knobs), already within bounds.
        reference: what the cluster was last told (the last decision, or the observed
            configuration before the first one); experts without a reference pass unchanged
            and keep what the memory holds of them.
        memory: from the last tick.
        rules: see :class:`SlowKnobRules`.
        pods: per expert, the pods a rollout would replace now (its Deployment's replicas).
        now: seconds on the loop's clock.

    Returns:
        the experts with held knobs set back to the reference, the new memory and a
        ``(rule, note)`` per held change (rule ``hysteresis`` or ``budget``), expert by expert
        in ``experts``' order.
    """
    names = rules.knobs + rules.decreases
    window = memory.window(now)
    out = dict(experts)
    order = [n for n in experts if n in reference]
    if not names or not order:
        return out, replace(memory, rollouts=window), []
    read = attrgetter(*names) if len(names) > 1 else (lambda e: (getattr(e, names[0]),))
    want = np.array([read(experts[n]) for n in order], float).reshape(len(order), len(names))
    have = np.array([read(reference[n]) for n in order], float).reshape(len(order), len(names))
    value, seen = memory.aligned(order, names)
    moved = want != have
    if rules.decreases:  # slow only when they go down
        moved &= ~((want > have) & np.isin(names, rules.decreases))
    small = moved & (np.abs(want - have) <= rules.threshold * np.abs(have))
    big = moved & ~small
    seen = np.where(big, np.where(value == want, seen + 1, 1), 0)
    waiting = big & (seen < rules.hysteresis_ticks)
    ready = big & ~waiting
    used = sum(p for _, p in window)
    budget = rules.budget_per_min
    late: dict[int, tuple[int, int]] = {}  # row -> (pods it needs, pods used before it)
    for i in np.flatnonzero(ready.any(1)).tolist():  # the budget goes expert by expert
        need = max(0, int(pods.get(order[i], 0)))
        if used + need <= budget or (used == 0 and budget > 0):
            used += need
            seen[i, ready[i]] = 0  # allowed: the next reference holds the new value
        else:
            late[i] = (need, used)
    held = small | waiting
    noted = held.any(1).tolist()  # rows with a hysteresis note
    if late:
        held[list(late)] |= ready[list(late)]
    notes: list[tuple[str, str]] = []
    k = len(names)  # flat lists, indexed row * k + knob: no list per expert
    small_f, seen_f, ready_f = small.ravel().tolist(), seen.ravel().tolist(), ready.ravel().tolist()
    have_f, kinds = have.ravel().tolist(), [_KIND[n] for n in names]
    ticks, threshold = rules.hysteresis_ticks, f"{rules.threshold:.0%}"
    patterns = (ready.astype(np.int64) << np.arange(k)).sum(1).tolist()  # which knobs wait
    joined: dict[int, str] = {}
    for i in sorted(set(np.flatnonzero(noted).tolist()) | set(late)):
        node = order[i]
        if noted[i]:
            e = experts[node]
            for j, knob in enumerate(names):
                at = i * k + j
                if small_f[at]:
                    notes.append(("hysteresis", f"{node}: {knob} {have_f[at]:g} -> "
                                                f"{getattr(e, knob):g} is within the "
                                                f"{threshold} threshold; held"))
                elif seen_f[at] and not ready_f[at]:
                    notes.append(("hysteresis", f"{node}: {knob} {have_f[at]:g} -> "
                                                f"{getattr(e, knob):g} seen {seen_f[at]}/"
                                                f"{ticks} ticks; held"))
        if i in late:
            need, before = late[i]
            waits = joined.get(patterns[i])
            if waits is None:
                waits = joined[patterns[i]] = ", ".join(
                    knob for j, knob in enumerate(names) if patterns[i] >> j & 1)
            notes.append(("budget", f"{node}: rollout of {need} pod(s) for {waits} waits for "
                                    f"the budget ({before}/{budget} pods this minute)"))
    rows = np.flatnonzero(held.any(1)).tolist()
    if rows:  # the held knobs back to the reference, column by column
        proposed = [experts[order[i]] for i in rows]
        columns = [list(map(attrgetter(knob), proposed)) for knob in KNOB_NAMES]
        for j, knob in enumerate(names):
            col, kind = columns[_KNOB_INDEX[knob]], kinds[j]
            for r in np.flatnonzero(held[rows, j]).tolist():
                col[r] = kind(have_f[rows[r] * k + j])
        out.update(zip((order[i] for i in rows), map(ExpertDecision, *columns), strict=True))
    rest = memory.others(order)  # the experts this tick did not look at keep their rows
    if rest.nodes:
        kept, later = rest.aligned(rest.nodes, names)
        return out, SlowKnobMemory(tuple(order) + rest.nodes, names,
                                   np.concatenate([np.where(seen > 0, want, np.nan), kept]),
                                   np.concatenate([seen, later]), window), notes
    return out, SlowKnobMemory(tuple(order), names, np.where(seen > 0, want, np.nan), seen,
                               window), notes
