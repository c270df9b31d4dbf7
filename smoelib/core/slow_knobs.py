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
from typing import Any

import numpy as np

from smoelib.core.decisions import ExpertDecision, ExpertTable, same_ids
from smoelib.core.knobs import KNOB_COLUMN, RESOURCE_KNOBS, SLOW_KNOBS

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
        if self.knobs == knobs and same_ids(nodes, self.nodes):
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
        if not self.nodes or same_ids(nodes, self.nodes):  # the common case: the same experts
            return SlowKnobMemory()
        skip = set(nodes)
        keep = [i for i in np.flatnonzero(self.ticks.any(1)).tolist()
                if self.nodes[i] not in skip]
        return SlowKnobMemory(tuple(self.nodes[i] for i in keep), self.knobs,
                              self.values[keep], self.ticks[keep]) if keep else SlowKnobMemory()


def hold_slow_knobs(experts: Mapping[str, ExpertDecision],
                    reference: Mapping[str, ExpertDecision], memory: SlowKnobMemory, *,
                    rules: SlowKnobRules, pods: Mapping[str, int] | np.ndarray, now: float
                    ) -> tuple[ExpertTable, SlowKnobMemory, list[tuple[str, str]]]:
    """Hold every slow-knob change the rules do not allow yet.

    Args:
        experts: the proposal (node id -> knobs, an :class:`ExpertTable` or any mapping),
            already within bounds.
        reference: what the cluster was last told (the last decision, or the observed
            configuration before the first one); experts without a reference pass unchanged
            and keep what the memory holds of them.
        memory: from the last tick.
        rules: see :class:`SlowKnobRules`.
        pods: per expert, the pods a rollout would replace now (its Deployment's replicas):
            a mapping, or an array in ``experts``' order.
        now: seconds on the loop's clock.

    Returns:
        the experts with held knobs set back to the reference (a table), the new memory and
        the ``(rule, note)`` pairs (rule ``hysteresis`` or ``budget``): one per held change,
        expert by expert in ``experts``' order, while a rule holds at most
        :data:`NOTE_LIMIT` changes; past that, one note for all of that rule's.
    """
    experts, reference = ExpertTable.of(experts), ExpertTable.of(reference)
    names = rules.knobs + rules.decreases
    window = memory.window(now)
    ref_at = reference.rows(experts.nodes)
    mine = np.flatnonzero(ref_at >= 0)  # the rows of experts with a reference
    if not names or not mine.size:
        return experts, replace(memory, rollouts=window), []
    every = mine.size == len(experts)
    order = experts.nodes if every else tuple(experts.nodes[i] for i in mine.tolist())
    cols = [KNOB_COLUMN[n] for n in names]
    want = experts.knobs[mine][:, cols]
    have = reference.knobs[ref_at[mine]][:, cols]
    value, seen = memory.aligned(order, names)
    moved = want != have
    if rules.decreases:  # slow only when they go down
        moved &= ~((want > have) & np.isin(names, rules.decreases))
    small = moved & (np.abs(want - have) <= rules.threshold * np.abs(have))
    big = moved & ~small
    seen = np.where(big, np.where(value == want, seen + 1, 1), 0)
    waiting = big & (seen < rules.hysteresis_ticks)
    ready = big & ~waiting
    candidates = np.flatnonzero(ready.any(1))  # the budget goes expert by expert
    late, need, before = _budget(candidates, _pods_of(pods, experts, mine, order), window,
                                 rules.budget_per_min)
    allowed = np.setdiff1d(candidates, late, assume_unique=True)
    seen[allowed] = np.where(ready[allowed], 0, seen[allowed])  # the next reference holds it
    held = small | waiting
    is_late = np.zeros(len(order), bool)
    is_late[late] = True
    held |= ready & is_late[:, None]
    notes = _notes(_Held(order, names, want, have, small, seen, ready, late, need, before),
                   rules)
    out = experts
    if held.any():  # the held knobs back to the reference (the others are written unchanged)
        values = experts.knobs.copy()
        values[np.ix_(mine, cols)] = np.where(held, have, want)
        out = experts.replaced(values)
    rest = memory.others(order)  # the experts this tick did not look at keep their rows
    if rest.nodes:
        kept, later = rest.aligned(rest.nodes, names)
        return out, SlowKnobMemory(tuple(order) + rest.nodes, names,
                                   np.concatenate([np.where(seen > 0, want, np.nan), kept]),
                                   np.concatenate([seen, later]), window), notes
    return out, SlowKnobMemory(tuple(order), names, np.where(seen > 0, want, np.nan), seen,
                               window), notes


def _pods_of(pods: Mapping[str, int] | np.ndarray, experts: ExpertTable, mine: np.ndarray,
             order: Sequence[str]) -> np.ndarray:
    """The pods each expert of ``order`` (the rows ``mine`` of ``experts``) would roll."""
    if isinstance(pods, np.ndarray):
        got = pods[mine]
    else:
        got = np.array([pods.get(n, 0) for n in order], float)
    return np.maximum(0, got.astype(np.int64))


def _budget(rows: np.ndarray, need: np.ndarray, window: Sequence[tuple[float, int]],
            budget: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Which of ``rows`` (in order, each rolling ``need[row]`` pods) wait for the budget of
    ``budget`` pods a minute, ``window`` already rolled: the rows, the pods each needs and the
    pods used before it. One that fits takes its pods; one larger than the whole budget may
    roll alone in an otherwise empty minute."""
    used = sum(p for _, p in window)
    late: list[int] = []
    before: list[int] = []
    order = rows.tolist()
    k = 0
    while k < len(order) and used < budget:
        i = order[k]
        if used + need[i] <= budget or used == 0:
            used += int(need[i])
        else:
            late.append(i)
            before.append(used)
        k += 1
    rest = rows[k:]  # the budget is spent: only a rollout of no pods still fits
    waits = rest[~((used + need[rest] <= budget) | ((used == 0) & (budget > 0)))]
    late_rows = np.concatenate([np.array(late, np.int64), waits])
    return (late_rows, need[late_rows],
            np.concatenate([np.array(before, np.int64), np.full(waits.size, used, np.int64)]))


NOTE_LIMIT = 32
"""Past this many held changes of one rule in a tick, the rule writes one note for them all
(counted, the first few named) instead of one each: a policy proposing a new share for every
expert of a deepseek-v3 size pipeline would otherwise write 15,000 notes a tick."""
_NAMED = 5  # experts a summary note names


@dataclass(frozen=True)
class _Held:
    """What :func:`hold_slow_knobs` held, for its notes: per row of ``order`` and knob of
    ``names``, the values (``want``, ``have``), ``small`` (within the threshold), ``seen``
    (ticks), ``ready`` (past the hysteresis); the rows waiting for the budget (``late``, in
    order), the pods each needs and the pods used before it."""

    order: Sequence[str]
    names: tuple[str, ...]
    want: np.ndarray
    have: np.ndarray
    small: np.ndarray
    seen: np.ndarray
    ready: np.ndarray
    late: np.ndarray
    need: np.ndarray
    before: np.ndarray

    def waits(self, i: int) -> str:
        """The knobs of row ``i`` whose rollout waits."""
        return ", ".join(k for k, r in zip(self.names, self.ready[i].tolist(), strict=True) if r)


def _notes(h: _Held, rules: SlowKnobRules) -> list[tuple[str, str]]:
    """The notes of the held changes: below the threshold or not yet seen for
    ``hysteresis_ticks`` ticks (``hysteresis``), waiting for the budget (``budget``). One per
    change, expert by expert, while a rule has at most :data:`NOTE_LIMIT`; past it, one for
    all of that rule's, after the other rule's."""
    noted = h.small | (h.seen.astype(bool) & ~h.ready)  # (rows, knobs) with a hysteresis note
    n_held, n_late = int(noted.sum()), int(h.late.size)
    each_held, each_late = n_held <= NOTE_LIMIT, n_late <= NOTE_LIMIT
    notes = _each(h, rules, noted if each_held else None, h.late if each_late else h.late[:0])
    if not each_held:
        rows, cols = np.nonzero(noted)
        named = ", ".join(f"{h.order[i]} {h.names[j]} {h.have[i, j]:g} -> {h.want[i, j]:g}"
                          for i, j in zip(rows[:_NAMED].tolist(), cols[:_NAMED].tolist(),
                                          strict=True))
        n_small = int(h.small.sum())
        notes.append(("hysteresis", f"{n_held} slow-knob changes held ({n_small} within the "
                                    f"{rules.threshold:.0%} threshold, {n_held - n_small} seen "
                                    f"fewer than {rules.hysteresis_ticks} ticks): {named} and "
                                    f"{n_held - _NAMED} more"))
    if not each_late:
        named = ", ".join(f"{h.order[i]} ({k} pod(s) for {h.waits(i)})" for i, k in zip(
            h.late[:_NAMED].tolist(), h.need[:_NAMED].tolist(), strict=True))
        notes.append(("budget", f"rollouts of {n_late} experts ({int(h.need.sum())} pods) "
                                f"wait for the budget ({int(h.before.max())}/"
                                f"{rules.budget_per_min} pods this minute): {named} and "
                                f"{n_late - _NAMED} more"))
    return notes


def _each(h: _Held, rules: SlowKnobRules, noted: np.ndarray | None, late: np.ndarray
          ) -> list[tuple[str, str]]:
    """One note per held change of ``noted`` (None: none) and per row of ``late``, expert by
    expert."""
    notes: list[tuple[str, str]] = []
    ticks, threshold = rules.hysteresis_ticks, f"{rules.threshold:.0%}"
    at_late = {i: k for k, i in enumerate(late.tolist())}  # late: the first rows of h.late
    rows = set(np.flatnonzero(noted.any(1)).tolist()) if noted is not None else set()
    for i in sorted(rows | set(at_late)):
        node = h.order[i]
        if i in rows:
            for j in np.flatnonzero(noted[i]).tolist():
                knob, was, new = h.names[j], h.have[i, j], h.want[i, j]
                why = (f"is within the {threshold} threshold" if h.small[i, j]
                       else f"seen {h.seen[i, j]}/{ticks} ticks")
                notes.append(("hysteresis", f"{node}: {knob} {was:g} -> {new:g} {why}; held"))
        if i in at_late:
            k = at_late[i]
            notes.append(("budget", f"{node}: rollout of {h.need[k]} pod(s) for {h.waits(i)} "
                                    f"waits for the budget ({h.before[k]}/"
                                    f"{rules.budget_per_min} pods this minute)"))
    return notes
