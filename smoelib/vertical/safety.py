"""Safety of the vertical control loop: hysteresis on slow knobs and a rollout budget. Pure.

A slow knob (one whose change replaces pods: GPU share and ``max_inflight``; CPU and memory too
without in-place resize) changes only when the new value has persisted for ``hysteresis_ticks``
ticks and differs from the live value by more than ``slow_knob_threshold`` (relative). Rollouts
then spend a budget of ``rollout_budget_per_min`` replaced pods per minute per pipeline; a
rollout that does not fit waits for a later tick. A function with more replicas than the whole
budget may roll alone in an otherwise empty minute, or it could never change.

These rules belong to the control loop; ``smoe plan`` applies an operator's decision as given.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from smoelib.vertical.planner import ExpertKnobs, Plan, PlanRules, plan_patches
from smoelib.vertical.records import Knobs, Patch, PipelineState

__all__ = ["SafetyRules", "SafetyMemory", "hold_slow_knobs", "spend_budget", "guarded_plan"]

_WINDOW_S = 60.0


@dataclass(frozen=True, slots=True)
class SafetyRules:
    """``hysteresis_ticks`` ticks, ``threshold`` relative change (fraction), ``budget_per_min``
    pods replaced per minute per pipeline."""

    hysteresis_ticks: int = 3
    threshold: float = 0.2
    budget_per_min: int = 4

    @classmethod
    def from_settings(cls, settings: Any) -> SafetyRules:
        g = settings.guards
        return cls(hysteresis_ticks=g.hysteresis_ticks, threshold=g.slow_knob_threshold,
                   budget_per_min=g.rollout_budget_per_min)


@dataclass(frozen=True, slots=True)
class SafetyMemory:
    """What the loop remembers between ticks: candidate values of slow knobs with the ticks
    they have persisted (``(node, knob) -> (value, ticks)``), and the rollouts of the last
    minute (``(unix seconds, pods replaced)``)."""

    candidates: Mapping[tuple[str, str], tuple[float, int]] = field(default_factory=dict)
    rollouts: tuple[tuple[float, int], ...] = ()


def slow_knobs(rules: PlanRules, writer: str) -> tuple[str, ...]:
    """The knobs whose change replaces pods for a function with this writer."""
    knobs = ("gpu_share", "concurrency")
    if not rules.in_place_resize or writer == "gateway":
        return knobs + ("cpu", "memory_mb")
    return knobs + (("memory_mb",) if rules.pin_device_memory else ())


def hold_slow_knobs(experts: Mapping[str, ExpertKnobs], live: Mapping[str, tuple[Knobs, str]],
                    memory: SafetyMemory, *, rules: SafetyRules, plan_rules: PlanRules
                    ) -> tuple[dict[str, Knobs], SafetyMemory, list[str]]:
    """The knobs to plan for: a slow knob keeps its live value until its change is large and
    has persisted. ``live`` maps node id -> (live knobs, writer); nodes without live state pass
    through unchanged. Returns the knobs, the new memory and notes on what was held."""
    out: dict[str, Knobs] = {}
    candidates = dict(memory.candidates)
    notes: list[str] = []
    for node, d in experts.items():
        want = Knobs(cpu=float(d.cpu), memory_mb=int(d.memory_mb), gpu_share=float(d.gpu_share),
                     concurrency=int(d.concurrency))
        if node not in live:
            out[node] = want
            continue
        have, writer = live[node]
        held: dict[str, Any] = {}
        for knob in slow_knobs(plan_rules, writer):
            new, old = want.get(knob), have.get(knob)
            key = (node, knob)
            if old is None or new == old:
                candidates.pop(key, None)
                continue
            if abs(new - old) <= rules.threshold * abs(old):
                candidates.pop(key, None)
                held[knob] = old
                notes.append(f"{node}: {knob} {old} -> {new} is within the threshold; held")
                continue
            value, ticks = candidates.get(key, (None, 0))
            ticks = ticks + 1 if value == new else 1
            candidates[key] = (new, ticks)
            if ticks < rules.hysteresis_ticks:
                held[knob] = old
                notes.append(f"{node}: {knob} {old} -> {new} seen {ticks}/"
                             f"{rules.hysteresis_ticks} ticks; held")
        out[node] = replace(want, **held)
    return out, SafetyMemory(candidates, memory.rollouts), notes


def spend_budget(patches: tuple[Patch, ...], memory: SafetyMemory, *, rules: SafetyRules,
                 now: float) -> tuple[tuple[Patch, ...], SafetyMemory, list[str]]:
    """Keep the rollouts that fit the budget (in plan order) and every other patch except the
    ScaledObject pause of a deferred rollout. ``now`` in Unix seconds."""
    window = tuple(r for r in memory.rollouts if now - r[0] < _WINDOW_S)
    used = sum(pods for _, pods in window)
    deferred: set[str] = set()
    kept: list[Patch] = []
    notes: list[str] = []
    for p in patches:
        if p.rollout:
            fits = used + p.pods_replaced <= rules.budget_per_min
            alone = used == 0 and rules.budget_per_min > 0
            if not (fits or alone):
                deferred.add(p.function)
                notes.append(f"{p.function}: rollout of {p.pods_replaced} pod(s) waits for the "
                             f"budget ({used}/{rules.budget_per_min} used this minute)")
                continue
            used += p.pods_replaced
            window += ((now, p.pods_replaced),)
        kept.append(p)
    kept = [p for p in kept if not (p.function in deferred and p.target.kind == "ScaledObject")]
    return tuple(kept), SafetyMemory(memory.candidates, window), notes


def guarded_plan(experts: Mapping[str, ExpertKnobs], state: PipelineState, memory: SafetyMemory,
                 *, functions: Mapping[str, str], plan_rules: PlanRules, rules: SafetyRules,
                 now: float) -> tuple[Plan, SafetyMemory]:
    """One control tick: hold slow knobs, plan, spend the rollout budget.

    Args:
        experts: node id -> decided knobs. state: the live pipeline. memory: from the last tick.
        functions: node id -> function name. now: Unix seconds (the loop's clock).
    """
    live = {n: (fs.knobs, fs.writer) for n, f in functions.items()
            if (fs := state.functions.get(f)) is not None}
    held, memory, notes = hold_slow_knobs(experts, live, memory, rules=rules,
                                          plan_rules=plan_rules)
    plan = plan_patches(held, state, functions=functions, rules=plan_rules, now=now)
    kept, memory, budget_notes = spend_budget(plan.patches, memory, rules=rules, now=now)
    return Plan(kept, plan.notes + tuple(notes) + tuple(budget_notes)), memory
