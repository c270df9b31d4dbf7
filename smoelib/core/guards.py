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
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from itertools import chain
from operator import attrgetter
from types import MappingProxyType
from typing import Any

import numpy as np

from smoelib.core.accounting import gpu_per_pod
from smoelib.core.decisions import ExpertTable, PipelineDecision, same_ids
from smoelib.core.knobs import INTEGER_KNOBS, KNOB_COLUMN, KNOB_NAMES
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
        self.rules: list[str] = []
        self.texts: list[str] = []

    def add(self, rule: str, text: str) -> None:
        self.rules.append(rule)
        self.texts.append(text)

    def extend(self, pairs: list[tuple[str, str]]) -> None:
        """``(rule, text)`` pairs."""
        if pairs:
            rules, texts = zip(*pairs, strict=True)
            self.rules += rules
            self.texts += texts

    def result(self, decision: PipelineDecision | None, accepted: bool,
               memory: SlowKnobMemory, shield_memory: ShieldMemory | None = None
               ) -> GuardResult:
        return GuardResult(decision, accepted, tuple(self.texts), tuple(self.rules), memory,
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

    The rules work on the experts' knobs as columns (:class:`ExpertTable`); the decision
    they return holds its experts as one, in the pipeline's expert order.
    """
    rules = get_profile(profile, where="guards.profile")
    memory = memory if memory is not None else SlowKnobMemory()
    notes = _Notes()
    refusal = _refusal(proposed, dag)
    if refusal:
        notes.add("refused", refusal)
        return notes.result(last, False, memory, shield_memory)
    experts = ExpertTable.of(proposed.experts)
    if last is not None and len(experts) < len(dag.experts):
        experts = _keep_unproposed(experts, ExpertTable.of(last.experts), dag, notes)
    experts = _clamp_all(experts, dag, settings, notes)
    base = (ExpertTable.of(last.experts) if last is not None else
            observed_decision(observation, dag) if observation is not None else _NONE)
    if rules.step_limits and base:
        experts = _limit_steps(experts, base, settings, notes)
    if rules.pressure_hold and base and observation is not None:
        pressure = slo_pressure(observation, slo=dag.slo)
        drops = shows_drops(observation)
        if drops or (math.isfinite(pressure) and pressure > settings.guards.pressure_threshold):
            why = ("dropped requests" if drops else pressure_text(observation, slo=dag.slo))
            experts = _hold_scale_down(experts, base, why, notes)
    if rules.busy_floor and observation is not None:
        experts = _keep_busy(experts, observation, dag, notes)
    if rules.slow_knobs and base:
        experts, memory, held = hold_slow_knobs(
            experts, base, memory, rules=SlowKnobRules.from_settings(settings),
            pods=_pods(observation, experts, base), now=now)
        notes.extend(held)
    if rules.shield and observation is not None:
        experts, shield_memory = shield(experts, observation=observation, dag=dag,
                                        settings=settings, memory=shield_memory, notes=notes)
    experts = _fit_gpus(experts, base, dag=dag, settings=settings, notes=notes)
    return notes.result(replace(proposed, experts=_in_order(experts, dag.experts)), True,
                        memory, shield_memory)


_NONE = ExpertTable((), ())


def _in_order(experts: ExpertTable, order: tuple[str, ...]) -> ExpertTable:
    """``experts`` in ``order`` (those it has)."""
    at = experts.rows(order)
    if len(at) == len(experts) and (at == np.arange(len(at))).all():
        return experts
    keep = np.flatnonzero(at >= 0)
    return ExpertTable([order[i] for i in keep.tolist()], experts.knobs[at[keep]])


def _keep_unproposed(experts: ExpertTable, last: ExpertTable, dag: PipelineDAG,
                     notes: _Notes) -> ExpertTable:
    """The last decision's knobs for every expert the proposal leaves out."""
    kept = [n for n in dag.experts if n not in experts and n in last]
    for node in kept:
        notes.add("bounds", f"{node}: no proposal; kept the last decision")
    if not kept:
        return experts
    return ExpertTable(experts.nodes + tuple(kept),
                       np.concatenate([experts.knobs, last.aligned(kept)]))


def _rows_of(nodes: tuple[str, ...], wanted: tuple[str, ...]) -> np.ndarray:
    """The position of each of ``wanted`` in ``nodes`` (-1: absent), remembered for the last
    few pairs of tuples (an observation's nodes and a decision's experts are the same tuples
    tick after tick)."""
    key = (id(nodes), id(wanted))
    got = _ROWS.get(key)
    if got is not None and got[0] is nodes and got[1] is wanted:
        return got[2]
    index = {n: i for i, n in enumerate(nodes)}
    at = np.array([index.get(n, -1) for n in wanted], np.int64)
    if len(_ROWS) >= 16:
        _ROWS.clear()
    _ROWS[key] = (nodes, wanted, at)
    return at


_ROWS: dict[tuple[int, int], tuple[tuple[str, ...], tuple[str, ...], np.ndarray]] = {}


def observed_decision(observation: Any, dag: PipelineDAG) -> ExpertTable:
    """The configuration an observation shows, as knobs per expert: the Deployments' replicas
    and the pods' resources, GPU share and concurrency (the reference before a first
    decision). An expert the observation lacks, or shows without a number for a knob, has
    none."""
    at = _rows_of(tuple(observation.nodes), dag.experts)
    seen = at >= 0
    rows = at[seen]
    columns = [np.asarray(getattr(observation, name), float)[rows] for name in
               ("replicas_desired", "cpu", "memory_mb", "gpu_share", "concurrency")]
    values = np.column_stack([np.rint(c) if integer else c
                              for c, integer in zip(columns, INTEGER_KNOBS, strict=True)])
    ok = np.isfinite(values).all(1)
    nodes = dag.experts if ok.all() and seen.all() else tuple(
        dag.experts[i] for i in np.flatnonzero(seen)[ok].tolist())
    return ExpertTable(nodes, values[ok])



def _pods(observation: Any, experts: ExpertTable, base: ExpertTable) -> np.ndarray:
    """Per expert of ``experts``, the pods a rollout would replace: its Deployment's replicas
    as observed (what the planner counts), else the reference's (0: neither)."""
    pods = np.nan_to_num(base.aligned(experts.nodes)[:, _REPLICAS])
    if observation is not None:
        at = _rows_of(tuple(observation.nodes), experts.nodes)
        seen = np.flatnonzero(at >= 0)
        shown = np.rint(np.asarray(observation.replicas_desired, float)[at[seen]])
        ok = np.isfinite(shown)
        pods[seen[ok]] = shown[ok]
    return pods.astype(np.int64)


_KNOB_VALUES = attrgetter(*KNOB_NAMES)
_NUMBERS = frozenset((int, float))


def _refusal(proposed: PipelineDecision, dag: PipelineDAG) -> str | None:
    if proposed.pipeline != dag.name:
        return f"refused: decision for pipeline {proposed.pipeline!r}, not {dag.name!r}"
    experts = proposed.experts
    if isinstance(experts, ExpertTable):  # numbers already: the columns checked at once
        if ((experts.nodes is dag.experts or _expert_set(dag).issuperset(experts.nodes))
                and np.isfinite(experts.knobs).all()):
            return None
    elif experts.keys() <= _expert_set(dag):  # the common case, checked at once
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
            if not isinstance(value, int | float):
                return f"refused: {node}.{knob} is {value!r}"
            try:
                finite = math.isfinite(value)
            except OverflowError:
                return (f"refused: {node}.{knob} is an integer of {len(str(abs(value)))} "
                        "digits, too large for any knob")
            if not finite:
                return f"refused: {node}.{knob} is {value!r}"
    return None


def _expert_set(dag: PipelineDAG) -> frozenset[str]:
    got = _EXPERT_SETS.get(dag)
    if got is None:
        got = _EXPERT_SETS[dag] = frozenset(dag.experts)
    return got


_EXPERT_SETS: weakref.WeakKeyDictionary[PipelineDAG, frozenset[str]] = (
    weakref.WeakKeyDictionary())


def _clamp_all(experts: ExpertTable, dag: PipelineDAG, settings: Settings,
               notes: _Notes) -> ExpertTable:
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
    nodes = experts.nodes
    limits = _limits(dag, runtime)
    at = slice(None) if same_ids(nodes, dag.experts) else _rows_of(dag.experts, nodes)
    values = experts.knobs
    v = values.T  # the knobs' columns, in KNOB_NAMES order
    within = ((limits.replicas_min[at] <= v[0]) & (v[0] <= limits.replicas_max[at])
              & (c_lo <= v[1]) & (v[1] <= c_hi)
              & (np.maximum(m_lo, limits.memory_floor[at]) <= v[2]) & (v[2] <= m_hi)
              & (g_lo <= v[3]) & (v[3] <= g_hi) & (k_lo <= v[4]) & (v[4] <= k_hi))
    bad = np.flatnonzero(~within).tolist()
    if not bad:  # the common case, checked at once: nothing to change
        return experts
    out = values.copy()
    for i in bad:
        node = nodes[i]
        spec = dag.spec(node)
        floor = memory_floor_mb(spec, runtime_memory_mb=runtime)
        for j, (knob, lo_j, hi_j) in enumerate((("replicas", spec.replicas_min,
                                                 spec.replicas_max), *shared)):
            value = values[i, j]
            if lo_j <= value <= hi_j:
                continue
            bounded = min(max(value, lo_j), hi_j)
            out[i, j] = int(bounded) if INTEGER_KNOBS[j] else bounded
            notes.add("bounds", f"{node}: {knob} {value:g} outside [{lo_j:g}, {hi_j:g}] -> "
                                f"{bounded:g}")
        memory = out[i, KNOB_COLUMN["memory_mb"]]
        if memory < floor:
            lifted = memory_choice(floor, a.memory_mb)
            out[i, KNOB_COLUMN["memory_mb"]] = lifted
            notes.add("bounds", f"{node}: memory_mb {memory:g} below runtime + weights "
                                f"({floor:g} MiB; a replica would be OOM-killed) -> {lifted:g}")
    return experts.replaced(out)


_REPLICAS = KNOB_COLUMN["replicas"]


@dataclass(frozen=True)
class _Limits:
    """Per expert of a DAG (``dag.experts`` order), what bounds its knobs: its replica bounds
    and its memory floor at one runtime size; ``row`` finds an expert's row."""

    row: Mapping[str, int]
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
            {n: i for i, n in enumerate(dag.experts)},
            np.array([s.replicas_min for s in specs], float),
            np.array([s.replicas_max for s in specs], float),
            np.array([memory_floor_mb(s, runtime_memory_mb=runtime_memory_mb) for s in specs]))
    return got


def _limit_steps(experts: ExpertTable, base: ExpertTable, settings: Settings,
                 notes: _Notes) -> ExpertTable:
    up, down = settings.guards.max_step_up, settings.guards.max_step_down
    want = experts.knobs[:, _REPLICAS]
    before = base.aligned(experts.nodes)[:, _REPLICAS]  # NaN: no reference, no limit
    bad = np.flatnonzero((want > before + up) | (want < before - down)).tolist()
    if not bad:  # the common case, checked at once: within the steps
        return experts
    out = experts.knobs.copy()
    for i in bad:
        was, asked = int(before[i]), int(want[i])
        target = min(max(asked, was - down), was + up)
        notes.add("step", f"{experts.nodes[i]}: replicas {was} -> {asked} limited to {target} "
                          f"(max step +{up}/-{down} per tick)")
        out[i, _REPLICAS] = target
    return experts.replaced(out)


def _hold_scale_down(experts: ExpertTable, base: ExpertTable, why: str, notes: _Notes
                     ) -> ExpertTable:
    before = base.aligned(experts.nodes)[:, _REPLICAS]
    held = experts.knobs[:, _REPLICAS] < before  # False where there is no reference (NaN)
    if not held.any():
        return experts
    out = experts.knobs.copy()
    out[held, _REPLICAS] = before[held]
    notes.add("pressure", f"scale-down held for {int(held.sum())} experts: {why} show SLO "
                          "pressure")
    return experts.replaced(out)


def busy_experts(observation: Any, dag: PipelineDAG) -> frozenset[str]:
    """The experts an observation shows with calls, calls in flight or 429s."""
    traffic = (np.nan_to_num(np.asarray(observation.calls_per_s, float))
               + np.nan_to_num(np.asarray(observation.inflight, float))
               + np.nan_to_num(np.asarray(observation.rejected_per_s, float)))
    nodes = observation.nodes
    return frozenset(nodes[i] for i in np.flatnonzero(traffic > 0).tolist()) & _expert_set(dag)


def _keep_busy(experts: ExpertTable, observation: Any, dag: PipelineDAG, notes: _Notes
               ) -> ExpertTable:
    zero = np.flatnonzero(experts.knobs[:, _REPLICAS] < 1)
    if not zero.size:  # the common case: nothing proposed at zero
        return experts
    busy = busy_experts(observation, dag)
    rows = [i for i in zero.tolist() if experts.nodes[i] in busy]
    if not rows:
        return experts
    kept = [experts.nodes[i] for i in rows]
    notes.add("busy", f"kept one replica of {len(kept)} busy experts proposed at zero: "
                 + ", ".join(sorted(kept)[:5]) + (" ..." if len(kept) > 5 else ""))
    out = experts.knobs.copy()
    out[rows, _REPLICAS] = 1
    return experts.replaced(out)


def _fit_gpus(experts: ExpertTable, base: ExpertTable, *, dag: PipelineDAG,
              settings: Settings, notes: _Notes) -> ExpertTable:
    mode = settings.gpu_sharing.mode
    capacity = float(settings.cluster.gpus)
    if mode == "none":
        return experts
    replicas = experts.knobs[:, _REPLICAS].copy()
    per_pod = gpu_per_pod(experts.knobs[:, KNOB_COLUMN["gpu_share"]], mode=mode,
                          slots_per_gpu=settings.gpu_sharing.slots_per_gpu)
    # not ``@``: a BLAS dot wakes the BLAS threads, which on a small machine wait for the
    # cores torch's threads still hold right after the decider (milliseconds at 15k experts)
    demand = float((replicas * per_pod).sum())
    if demand <= capacity + 1e-9:
        return experts
    before = np.nan_to_num(base.aligned(experts.nodes)[:, _REPLICAS])  # 0: no reference
    limits = _limits(dag, settings.cluster.runtime_memory_mb)
    floor = limits.replicas_min[_rows_of(dag.experts, experts.nodes)]
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
    out = experts.knobs.copy()
    out[:, _REPLICAS] = replicas
    return experts.replaced(out)
