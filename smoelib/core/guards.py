"""Safety rules between a policy's proposal and the cluster. Pure: no I/O, no clock.

:func:`guard` turns a proposed :class:`~smoelib.core.decisions.PipelineDecision` into the one that
may be applied, rule by rule:

1. refuse a proposal with NaN or infinite values, or experts the pipeline does not have (the last
   good decision stays);
2. clamp every knob to the pipeline's replica bounds and the action space's range;
3. limit each expert's replica change per tick (up and down separately);
4. hold scale-down while the latest observation shows SLO pressure;
5. keep one replica of every expert that the latest observation shows busy (calls, calls in
   flight or 429s): scaling it to zero would stall every request that needs it;
6. fit the GPU capacity of the cluster, taking replicas back from the largest increases first.

Rules 2-6 adjust and say what they changed; rule 1 refuses. Nothing here raises for bad
proposals: the controller logs the notes and keeps going.
"""

from __future__ import annotations

import math
from collections.abc import Collection
from dataclasses import dataclass, replace
from types import MappingProxyType
from typing import Any

import numpy as np

from smoelib.core.accounting import gpu_per_pod
from smoelib.core.decisions import ExpertDecision, PipelineDecision
from smoelib.core.knobs import KNOB_NAMES
from smoelib.pipeline.topology import PipelineDAG
from smoelib.settings import Settings

__all__ = ["GuardResult", "guard", "busy_experts"]



@dataclass(frozen=True)
class GuardResult:
    """``decision`` is what may be applied (the last good one when ``accepted`` is False);
    ``notes`` say what each rule changed or why the proposal was refused."""

    decision: PipelineDecision | None
    accepted: bool
    notes: tuple[str, ...]


def guard(proposed: PipelineDecision, *, dag: PipelineDAG, settings: Settings,
          last: PipelineDecision | None = None, p95_ms: float | None = None,
          busy: Collection[str] = ()) -> GuardResult:
    """Apply the safety rules to ``proposed``.

    Args:
        proposed: the policy's decision.
        dag: the pipeline (bounds, expert ids, SLO).
        settings: guards, actions, cluster capacity, GPU sharing mode.
        last: the last applied decision (step limits and scale-down hold start from it).
        p95_ms: the latest observed end-to-end P95 (None or NaN: no pressure known).
        busy: experts the latest observation shows serving or refusing calls
            (:func:`busy_experts`); each keeps at least one replica.
    """
    refusal = _refusal(proposed, dag)
    if refusal:
        return GuardResult(last, False, (refusal,))
    notes: list[str] = []
    experts = dict(proposed.experts)
    if last is not None:
        for node in dag.experts:
            if node not in experts and node in last.experts:
                experts[node] = last.experts[node]
                notes.append(f"{node}: no proposal; kept the last decision")
    experts = {n: _clamp(n, e, dag, settings, notes) for n, e in experts.items()}
    if last is not None:
        experts = _limit_steps(experts, last, settings, notes)
        slo = dag.slo_ms * settings.guards.pressure_threshold
        if p95_ms is not None and math.isfinite(p95_ms) and p95_ms > slo:
            experts = _hold_scale_down(experts, last, p95_ms, notes)
    experts = _keep_busy(experts, busy, notes)
    experts = _fit_gpus(experts, last, dag=dag, settings=settings, notes=notes)
    decision = replace(proposed, experts=MappingProxyType(
        {n: experts[n] for n in dag.experts if n in experts}))
    return GuardResult(decision, True, tuple(notes))


def _refusal(proposed: PipelineDecision, dag: PipelineDAG) -> str | None:
    if proposed.pipeline != dag.name:
        return f"refused: decision for pipeline {proposed.pipeline!r}, not {dag.name!r}"
    known = set(dag.experts)
    for node, e in proposed.experts.items():
        if node not in known:
            return f"refused: {node!r} is not an expert of {dag.name!r}"
        for knob in KNOB_NAMES:
            value = getattr(e, knob)
            if not isinstance(value, int | float) or not math.isfinite(value):
                return f"refused: {node}.{knob} is {value!r}"
    return None


def _clamp(node: str, e: ExpertDecision, dag: PipelineDAG, settings: Settings,
           notes: list[str]) -> ExpertDecision:
    spec = dag.spec(node)
    a = settings.actions
    ranges = {"replicas": (spec.replicas_min, spec.replicas_max),
              "cpu": (min(a.cpu), max(a.cpu)),
              "memory_mb": (min(a.memory_mb), max(a.memory_mb)),
              "gpu_share": (0.0, 1.0) if settings.gpu_sharing.mode != "none" else (0.0, 0.0),
              "concurrency": (min(a.concurrency), max(a.concurrency))}
    changed = {}
    for knob, (lo, hi) in ranges.items():
        value = getattr(e, knob)
        bounded = min(max(value, lo), hi)
        if bounded != value:
            changed[knob] = type(value)(bounded)
            notes.append(f"{node}: {knob} {value:g} outside [{lo:g}, {hi:g}] -> {bounded:g}")
    return replace(e, **changed) if changed else e


def _limit_steps(experts: dict[str, ExpertDecision], last: PipelineDecision,
                 settings: Settings, notes: list[str]) -> dict[str, ExpertDecision]:
    up, down = settings.guards.max_step_up, settings.guards.max_step_down
    out = {}
    for node, e in experts.items():
        before = last.experts.get(node)
        if before is None:
            out[node] = e
            continue
        target = min(max(e.replicas, before.replicas - down), before.replicas + up)
        if target != e.replicas:
            notes.append(f"{node}: replicas {before.replicas} -> {e.replicas} limited to "
                         f"{target} (max step +{up}/-{down} per tick)")
        out[node] = replace(e, replicas=target) if target != e.replicas else e
    return out


def _hold_scale_down(experts: dict[str, ExpertDecision], last: PipelineDecision, p95_ms: float,
                     notes: list[str]) -> dict[str, ExpertDecision]:
    out = {}
    held = []
    for node, e in experts.items():
        before = last.experts.get(node)
        if before is not None and e.replicas < before.replicas:
            held.append(node)
            e = replace(e, replicas=before.replicas)
        out[node] = e
    if held:
        notes.append(f"scale-down held for {len(held)} experts: P95 {p95_ms:.1f} ms shows SLO "
                     "pressure")
    return out


def busy_experts(observation: Any, dag: PipelineDAG) -> frozenset[str]:
    """The experts an observation shows with calls, calls in flight or 429s."""
    traffic = (np.nan_to_num(np.asarray(observation.calls_per_s, float))
               + np.nan_to_num(np.asarray(observation.inflight, float))
               + np.nan_to_num(np.asarray(observation.rejected_per_s, float)))
    experts = set(dag.experts)
    return frozenset(n for n, t in zip(observation.nodes, traffic, strict=True)
                     if t > 0 and n in experts)


def _keep_busy(experts: dict[str, ExpertDecision], busy: Collection[str], notes: list[str]
               ) -> dict[str, ExpertDecision]:
    kept = [n for n, e in experts.items() if e.replicas < 1 and n in busy]
    if kept:
        notes.append(f"kept one replica of {len(kept)} busy experts proposed at zero: "
                     + ", ".join(sorted(kept)[:5]) + (" ..." if len(kept) > 5 else ""))
    return {n: replace(e, replicas=1) if n in kept else e for n, e in experts.items()}


def _fit_gpus(experts: dict[str, ExpertDecision], last: PipelineDecision | None, *,
              dag: PipelineDAG, settings: Settings, notes: list[str]
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
    before = np.array([last.experts[n].replicas if last and n in last.experts else 0
                       for n in nodes], dtype=float)
    floor = np.array([dag.spec(n).replicas_min for n in nodes], dtype=float)
    asked = demand
    taken = 0
    while demand > capacity + 1e-9:
        # take from the largest increase over the last decision, ties to the largest pool
        key = (replicas - before) * 1e6 + replicas
        key[(replicas <= floor) | (per_pod <= 0)] = -np.inf
        i = int(np.argmax(key))
        if not np.isfinite(key[i]):
            notes.append(f"GPU capacity {capacity:g}: the replica minimums alone need "
                         f"{demand:.2f} GPUs")
            break
        replicas[i] -= 1
        demand -= per_pod[i]
        taken += 1
    notes.append(f"GPU capacity {capacity:g}: asked {asked:.2f} GPUs, took back {taken} "
                 f"replicas from the largest increases")
    return {n: replace(experts[n], replicas=int(replicas[i])) if replicas[i] !=
            experts[n].replicas else experts[n] for i, n in enumerate(nodes)}
