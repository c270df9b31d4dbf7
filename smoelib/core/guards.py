"""Safety rules between a policy's proposal and the cluster. Pure: no I/O, no clock.

:func:`guard` turns a proposed :class:`~smoelib.core.decisions.PipelineDecision` into the one
that may be applied, rule by rule, under a named :class:`GuardProfile`:

1. ``refused``: a proposal with NaN or infinite values, or experts the pipeline does not have
   (the last good decision stays);
2. ``bounds``: every knob within the pipeline's replica bounds and the action space's range;
3. ``step``: each expert's replica change per tick limited (up and down separately);
4. ``pressure``: no scale-down while the latest observation shows SLO pressure (its latency
   over ``guards.pressure_threshold`` of the SLO, or dropped requests);
5. ``busy``: one replica kept of every expert that the latest observation shows busy (calls,
   calls in flight or 429s): scaling it to zero would stall every request that needs it;
6. ``hysteresis`` and ``budget``: slow knobs (they roll pods) change only after persisting, by
   more than a threshold, within the rollout budget (:mod:`smoelib.core.slow_knobs`);
7. ``shield``: replicas lifted so that no expert is offered more work than
   ``guards.shield_bound`` at its load and its forecast, one replica added at once to an
   expert refusing a burst of calls, and CPU lifted in place where one call alone is too slow
   for the SLO; never a knob that rolls pods (:mod:`smoelib.core.shield`);
8. ``capacity``: the cluster's GPUs, taking replicas back from the largest increases first.

Rules 3-6 start from the last decision (before the first one: the observed configuration).
Profiles: ``production`` runs every rule (what sMoE's controller runs); ``unshielded`` every
rule but the shield (what the shield adds is measured against it); ``physical`` only 1, 2 and
8, the limits any cluster imposes (how the external systems we compare with run in their own
world). Rules 2-7 adjust and say what they changed; rule 1 refuses. Nothing here raises for
bad proposals: the caller logs the notes and keeps going.
"""

from __future__ import annotations

import math
import weakref
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field, replace
from itertools import chain
from operator import attrgetter
from types import MappingProxyType
from typing import Any

import numpy as np

from smoelib.core.accounting import gpu_per_pod
from smoelib.core.decisions import ExpertDecision, PipelineDecision
from smoelib.core.knobs import KNOB_NAMES
from smoelib.core.service import memory_choice, memory_floor_mb
from smoelib.core.shield import ShieldMemory, shield
from smoelib.core.slo import pressure_text, shows_drops, slo_pressure
from smoelib.core.slow_knobs import SlowKnobMemory, SlowKnobRules, hold_slow_knobs
from smoelib.errors import ConfigError, Problem
from smoelib.pipeline.topology import PipelineDAG
from smoelib.settings import Settings

__all__ = ["GuardProfile", "GuardResult", "PROFILES", "RULES", "guard", "busy_experts",
           "get_profile", "observed_decision"]

RULES = ("refused", "bounds", "step", "pressure", "busy", "hysteresis", "budget", "shield",
         "capacity")
"""Every rule's name, as notes, logs and the controller's metrics count them."""


@dataclass(frozen=True)
class GuardProfile:
    """Which rules run beyond the physical ones (refusal, bounds, capacity always do)."""

    name: str
    step_limits: bool
    pressure_hold: bool
    busy_floor: bool
    slow_knobs: bool
    shield: bool = False


PROFILES: Mapping[str, GuardProfile] = MappingProxyType({
    "production": GuardProfile("production", step_limits=True, pressure_hold=True,
                               busy_floor=True, slow_knobs=True, shield=True),
    "unshielded": GuardProfile("unshielded", step_limits=True, pressure_hold=True,
                               busy_floor=True, slow_knobs=True, shield=False),
    "physical": GuardProfile("physical", step_limits=False, pressure_hold=False,
                             busy_floor=False, slow_knobs=False),
})
"""The named guard profiles (module docstring)."""


def get_profile(name: str | GuardProfile, *, where: str = "--guards") -> GuardProfile:
    """The profile called ``name``.

    Raises:
        ConfigError: no such profile (naming ``where`` and the known ones).
    """
    if isinstance(name, GuardProfile):
        return name
    if name not in PROFILES:
        raise ConfigError([Problem(where, f"unknown guard profile {name!r}; known: "
                                          f"{', '.join(PROFILES)}")])
    return PROFILES[name]


@dataclass(frozen=True)
class GuardResult:
    """``decision`` is what may be applied (the last good one when ``accepted`` is False);
    ``notes`` say what each rule changed or why the proposal was refused, ``fired`` names the
    rule of each note (:data:`RULES`); ``memory`` is the slow-knob memory and ``shield`` the
    shield's for the next tick."""

    decision: PipelineDecision | None
    accepted: bool
    notes: tuple[str, ...]
    fired: tuple[str, ...] = ()
    memory: SlowKnobMemory = field(default_factory=SlowKnobMemory)
    shield: ShieldMemory = field(default_factory=ShieldMemory)


class _Notes:
    def __init__(self) -> None:
        self.items: list[tuple[str, str]] = []

    def add(self, rule: str, text: str) -> None:
        self.items.append((rule, text))

    def extend(self, rule: str, texts: list[str]) -> None:
        self.items += [(rule, t) for t in texts]

    def result(self, decision: PipelineDecision | None, accepted: bool,
               memory: SlowKnobMemory, shield_memory: ShieldMemory | None = None
               ) -> GuardResult:
        return GuardResult(decision, accepted, tuple(t for _, t in self.items),
                           tuple(r for r, _ in self.items), memory,
                           shield_memory if shield_memory is not None else ShieldMemory())


def guard(proposed: PipelineDecision, *, dag: PipelineDAG, settings: Settings,
          profile: str | GuardProfile = "production", last: PipelineDecision | None = None,
          observation: Any = None, memory: SlowKnobMemory | None = None,
          now: float = 0.0, shield_memory: ShieldMemory | None = None) -> GuardResult:
    """Apply the profile's rules to ``proposed``.

    Args:
        proposed: the policy's decision.
        dag: the pipeline (bounds, expert ids, SLO).
        settings: guards, actions, cluster capacity, GPU sharing mode.
        profile: a :class:`GuardProfile` or its name.
        last: the last applied decision (rules 3-6 start from it).
        observation: the latest observation: SLO pressure, busy experts, the pods a rollout
            replaces, and the reference configuration before the first decision (None: none
            of these is known).
        memory: the slow-knob memory of the last tick.
        now: seconds on the loop's clock (the rollout budget's window).
        shield_memory: the shield's memory of the last tick (its trend).
    """
    rules = get_profile(profile, where="guards.profile")
    memory = memory if memory is not None else SlowKnobMemory()
    notes = _Notes()
    refusal = _refusal(proposed, dag)
    if refusal:
        notes.add("refused", refusal)
        return notes.result(last, False, memory, shield_memory)
    experts = dict(proposed.experts)
    if last is not None:
        for node in dag.experts:
            if node not in experts and node in last.experts:
                experts[node] = last.experts[node]
                notes.add("bounds", f"{node}: no proposal; kept the last decision")
    experts = _clamp_all(experts, dag, settings, notes)
    base = dict(last.experts) if last is not None else (
        observed_decision(observation, dag) if observation is not None else {})
    if rules.step_limits and base:
        experts = _limit_steps(experts, base, settings, notes)
    if rules.pressure_hold and base and observation is not None:
        pressure = slo_pressure(observation, slo=dag.slo)
        drops = shows_drops(observation)
        if drops or (math.isfinite(pressure) and pressure > settings.guards.pressure_threshold):
            why = ("dropped requests" if drops else pressure_text(observation, slo=dag.slo))
            experts = _hold_scale_down(experts, base, why, notes)
    if rules.busy_floor and observation is not None:
        experts = _keep_busy(experts, busy_experts(observation, dag), notes)
    if rules.slow_knobs and base:
        experts, memory, held = hold_slow_knobs(
            experts, base, memory, rules=SlowKnobRules.from_settings(settings),
            pods=_pods(observation, dag, base), now=now)
        notes.items += held
    if rules.shield and observation is not None:
        experts, shield_memory = shield(experts, observation=observation, dag=dag,
                                        settings=settings, memory=shield_memory, notes=notes)
    experts = _fit_gpus(experts, base, dag=dag, settings=settings, notes=notes)
    decision = replace(proposed, experts=MappingProxyType(
        {n: experts[n] for n in dag.experts if n in experts}))
    return notes.result(decision, True, memory, shield_memory)


def observed_decision(observation: Any, dag: PipelineDAG) -> dict[str, ExpertDecision]:
    """The configuration an observation shows, as knobs per expert: the Deployments' replicas
    and the pods' resources, GPU share and concurrency (the reference before a first
    decision)."""
    index = {n: i for i, n in enumerate(observation.nodes)}
    out = {}
    for node in dag.experts:
        i = index.get(node)
        if i is None:
            continue
        out[node] = ExpertDecision(
            replicas=int(round(float(observation.replicas_desired[i]))),
            cpu=float(observation.cpu[i]), memory_mb=int(round(float(observation.memory_mb[i]))),
            gpu_share=float(observation.gpu_share[i]),
            concurrency=int(round(float(observation.concurrency[i]))))
    return out


def _pods(observation: Any, dag: PipelineDAG, base: Mapping[str, ExpertDecision]
          ) -> dict[str, int]:
    """Per expert, the pods a rollout would replace: its Deployment's replicas as observed
    (what the planner counts), else the last decision's."""
    if observation is None:
        return {n: e.replicas for n, e in base.items()}
    index = {n: i for i, n in enumerate(observation.nodes)}
    return {n: int(round(float(observation.replicas_desired[index[n]]))) if n in index
            else base[n].replicas for n in base}


_KNOB_VALUES = attrgetter(*KNOB_NAMES)
_NUMBERS = frozenset((int, float))
_BOUNDED = attrgetter("replicas", "cpu", "memory_mb", "gpu_share", "concurrency")
"""the knobs :func:`_clamp_all` bounds, in the order its fast path reads them"""


def _refusal(proposed: PipelineDecision, dag: PipelineDAG) -> str | None:
    if proposed.pipeline != dag.name:
        return f"refused: decision for pipeline {proposed.pipeline!r}, not {dag.name!r}"
    experts = proposed.experts
    if experts.keys() <= _expert_set(dag):  # the common case, checked at once
        rows = list(map(_KNOB_VALUES, experts.values()))
        if _NUMBERS.issuperset(map(type, chain.from_iterable(rows))):
            with np.errstate(over="ignore"):
                try:
                    if np.isfinite(np.array(rows, float)).all():
                        return None
                except OverflowError:  # an int too large for a float: named below
                    pass
    known = _expert_set(dag)
    for node, e in experts.items():
        if node not in known:
            return f"refused: {node!r} is not an expert of {dag.name!r}"
        for knob, value in zip(KNOB_NAMES, _KNOB_VALUES(e), strict=True):
            if not isinstance(value, int | float) or not math.isfinite(value):
                return f"refused: {node}.{knob} is {value!r}"
    return None


def _expert_set(dag: PipelineDAG) -> frozenset[str]:
    got = _EXPERT_SETS.get(dag)
    if got is None:
        got = _EXPERT_SETS[dag] = frozenset(dag.experts)
    return got


_EXPERT_SETS: weakref.WeakKeyDictionary[PipelineDAG, frozenset[str]] = (
    weakref.WeakKeyDictionary())


def _clamp_all(experts: Mapping[str, ExpertDecision], dag: PipelineDAG, settings: Settings,
               notes: _Notes) -> dict[str, ExpertDecision]:
    """Every expert's knobs within its replica bounds and the action space's range, and its
    memory at least the runtime plus its weights."""
    a = settings.actions
    shared = (("cpu", min(a.cpu), max(a.cpu)),
              ("memory_mb", min(a.memory_mb), max(a.memory_mb)),
              ("gpu_share", *((0.0, 0.0) if settings.gpu_sharing.mode == "none"
                              or dag.accelerator == "cpu" else (0.0, 1.0))),
              ("concurrency", min(a.concurrency), max(a.concurrency)))
    runtime = settings.cluster.runtime_memory_mb
    (_, c_lo, c_hi), (_, m_lo, m_hi), (_, g_lo, g_hi), (_, k_lo, k_hi) = shared
    nodes = list(experts)
    limits = _limits(dag, runtime)
    at = (limits.every if len(nodes) == len(limits.every) and tuple(nodes) == dag.experts
          else np.array([limits.row[n] for n in nodes], np.int64))
    values = np.array(list(map(_BOUNDED, experts.values())), float).reshape(len(nodes), 5)
    lo = np.column_stack([limits.replicas_min[at], np.full(len(nodes), c_lo),
                          np.maximum(m_lo, limits.memory_floor[at]),
                          np.full(len(nodes), g_lo), np.full(len(nodes), k_lo)])
    hi = np.column_stack([limits.replicas_max[at], np.full(len(nodes), c_hi),
                          np.full(len(nodes), m_hi), np.full(len(nodes), g_hi),
                          np.full(len(nodes), k_hi)])
    out = dict(experts)  # the common case, checked at once: nothing to change
    for i in np.flatnonzero(~((lo <= values) & (values <= hi)).all(1)).tolist():
        node = nodes[i]
        e, spec = experts[node], dag.spec(node)
        floor = memory_floor_mb(spec, runtime_memory_mb=runtime)
        changed = {}
        for knob, lo, hi in (("replicas", spec.replicas_min, spec.replicas_max), *shared):
            value = getattr(e, knob)
            if lo <= value <= hi:
                continue
            bounded = min(max(value, lo), hi)
            changed[knob] = type(value)(bounded)
            notes.add("bounds", f"{node}: {knob} {value:g} outside [{lo:g}, {hi:g}] -> "
                                f"{bounded:g}")
        memory = changed.get("memory_mb", e.memory_mb)
        if memory < floor:
            lifted = memory_choice(floor, a.memory_mb)
            changed["memory_mb"] = lifted
            notes.add("bounds", f"{node}: memory_mb {memory:g} below runtime + weights "
                                f"({floor:g} MiB; a replica would be OOM-killed) -> {lifted:g}")
        out[node] = e.with_knobs(**changed) if changed else e
    return out


@dataclass(frozen=True)
class _Limits:
    """Per expert of a DAG (``dag.experts`` order), what bounds its knobs: its replica bounds
    and its memory floor at one runtime size; ``row`` finds an expert's row."""

    row: Mapping[str, int]
    every: np.ndarray
    replicas_min: np.ndarray
    replicas_max: np.ndarray
    memory_floor: np.ndarray


_LIMITS: weakref.WeakKeyDictionary[PipelineDAG, dict[float, _Limits]] = (
    weakref.WeakKeyDictionary())


def _limits(dag: PipelineDAG, runtime_memory_mb: float) -> _Limits:
    """The DAG's :class:`_Limits`, built once per DAG and runtime size."""
    per_dag = _LIMITS.setdefault(dag, {})
    got = per_dag.get(runtime_memory_mb)
    if got is None:
        specs = [dag.spec(n) for n in dag.experts]
        got = per_dag[runtime_memory_mb] = _Limits(
            {n: i for i, n in enumerate(dag.experts)}, np.arange(len(specs)),
            np.array([s.replicas_min for s in specs], float),
            np.array([s.replicas_max for s in specs], float),
            np.array([memory_floor_mb(s, runtime_memory_mb=runtime_memory_mb) for s in specs]))
    return got


def _limit_steps(experts: dict[str, ExpertDecision], base: Mapping[str, ExpertDecision],
                 settings: Settings, notes: _Notes) -> dict[str, ExpertDecision]:
    up, down = settings.guards.max_step_up, settings.guards.max_step_down
    nodes = list(experts)
    want = np.array([e.replicas for e in experts.values()], float)
    before = np.array([b.replicas if (b := base.get(n)) is not None else np.nan for n in nodes],
                      float)
    out = dict(experts)  # the common case, checked at once: within the steps
    for i in np.flatnonzero((want > before + up) | (want < before - down)).tolist():
        node = nodes[i]
        e, was = experts[node], base[node].replicas
        target = min(max(e.replicas, was - down), was + up)
        notes.add("step", f"{node}: replicas {was} -> {e.replicas} limited to {target} (max "
                          f"step +{up}/-{down} per tick)")
        out[node] = e.with_knobs(replicas=target)
    return out


def _hold_scale_down(experts: dict[str, ExpertDecision], base: Mapping[str, ExpertDecision],
                     why: str, notes: _Notes) -> dict[str, ExpertDecision]:
    out = {}
    held = []
    for node, e in experts.items():
        before = base.get(node)
        if before is not None and e.replicas < before.replicas:
            held.append(node)
            e = e.with_knobs(replicas=before.replicas)
        out[node] = e
    if held:
        notes.add("pressure", f"scale-down held for {len(held)} experts: {why} show SLO "
                              "pressure")
    return out


def busy_experts(observation: Any, dag: PipelineDAG) -> frozenset[str]:
    """The experts an observation shows with calls, calls in flight or 429s."""
    traffic = (np.nan_to_num(np.asarray(observation.calls_per_s, float))
               + np.nan_to_num(np.asarray(observation.inflight, float))
               + np.nan_to_num(np.asarray(observation.rejected_per_s, float)))
    nodes = observation.nodes
    return frozenset(nodes[i] for i in np.flatnonzero(traffic > 0).tolist()) & _expert_set(dag)


def _keep_busy(experts: dict[str, ExpertDecision], busy: Collection[str], notes: _Notes
               ) -> dict[str, ExpertDecision]:
    kept = [n for n, e in experts.items() if e.replicas < 1 and n in busy]
    if kept:
        notes.add("busy", f"kept one replica of {len(kept)} busy experts proposed at zero: "
                     + ", ".join(sorted(kept)[:5]) + (" ..." if len(kept) > 5 else ""))
    return {n: e.with_knobs(replicas=1) if n in kept else e for n, e in experts.items()}


def _fit_gpus(experts: dict[str, ExpertDecision], base: Mapping[str, ExpertDecision], *,
              dag: PipelineDAG, settings: Settings, notes: _Notes
              ) -> dict[str, ExpertDecision]:
    mode = settings.gpu_sharing.mode
    capacity = float(settings.cluster.gpus)
    if mode == "none":
        return experts
    nodes = list(experts)
    replicas = np.array([experts[n].replicas for n in nodes], dtype=float)
    per_pod = gpu_per_pod([experts[n].gpu_share for n in nodes], mode=mode,
                          slots_per_gpu=settings.gpu_sharing.slots_per_gpu)
    demand = float(replicas @ per_pod)
    if demand <= capacity + 1e-9:
        return experts
    before = np.array([base[n].replicas if n in base else 0 for n in nodes], dtype=float)
    floor = np.array([dag.spec(n).replicas_min for n in nodes], dtype=float)
    asked = demand
    taken = 0
    while demand > capacity + 1e-9:
        # take from the largest increase over the last decision, ties to the largest pool
        key = (replicas - before) * 1e6 + replicas
        key[(replicas <= floor) | (per_pod <= 0)] = -np.inf
        i = int(np.argmax(key))
        if not np.isfinite(key[i]):
            notes.add("capacity", f"GPU capacity {capacity:g}: the replica minimums alone "
                                  f"need {demand:.2f} GPUs")
            break
        replicas[i] -= 1
        demand -= per_pod[i]
        taken += 1
    notes.add("capacity", f"GPU capacity {capacity:g}: asked {asked:.2f} GPUs, took back "
                          f"{taken} replicas from the largest increases")
    return {n: experts[n].with_knobs(replicas=int(replicas[i])) if replicas[i] !=
            experts[n].replicas else experts[n] for i, n in enumerate(nodes)}
