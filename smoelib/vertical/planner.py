"""The vertical planner: a decision and the live state in, patch records out. Pure.

Rules (``docs/vertical.md``):

- CPU and memory change in place, one ``pods/resize`` per running pod, keeping its QoS class;
  the Deployment template is not touched for them (a template change replaces every pod) and
  catches up at the next rollout that happens anyway. A resize the kubelet reports
  ``Infeasible``, or ``Deferred`` for longer than the grace, falls back to a rollout. Without
  in-place resize (or through the gateway) CPU and memory are slow knobs.
- GPU share and ``max_inflight`` are read once at process start: they change through the pod
  template, which replaces pods, with rollout settings that keep capacity.
- Only the functions the pipeline names are touched; the KEDA ScaledObject of a rolling function
  is optionally paused and resumed once the rollout is done.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Protocol

from smoelib.errors import ConfigError, Problem
from smoelib.vertical.planner_writers import (
    pause_patch,
    resize_patch,
    rollout_patch,
    sim_in_place_patch,
)
from smoelib.vertical.records import FunctionState, Knobs, Patch, PipelineState
from smoelib.vertical.template import SharingRules, resources_of

__all__ = ["Plan", "PlanRules", "plan_patches", "ExpertKnobs", "check_scope",
           "SCALE_ZERO_LABEL"]

SCALE_ZERO_LABEL = "com.openfaas.scale.zero"
"""OpenFaaS Pro's scale-to-zero opt-in: must stay unset on sMoE's functions."""


class ExpertKnobs(Protocol):
    """What the planner reads of one expert's decision
    (``smoelib.core.decisions.ExpertDecision``)."""

    cpu: float
    memory_mb: int
    gpu_share: float
    concurrency: int


@dataclass(frozen=True, slots=True)
class PlanRules(SharingRules):
    """The planner's settings: GPU sharing (see ``SharingRules``), whether the cluster has
    in-place resize, whether to pause ScaledObjects during rollouts, and how long (s) a
    ``Deferred`` resize may wait before it falls back to a rollout."""

    in_place_resize: bool = True
    in_place_memory_decrease: bool = False
    pinned_mb: Mapping[str, int] = field(default_factory=lambda: MappingProxyType({}))
    """mps-env: function -> pinned GPU memory limit, MiB (the pipeline's gpu_memory_mb)"""
    pause_scaledobject: bool = False
    deferred_grace_s: float = 60.0

    @classmethod
    def from_settings(cls, settings: Any, *, dag: Any = None) -> PlanRules:
        """Rules from a :class:`smoelib.settings.Settings` tree (and the pipeline's pinned GPU
        memory limits, when ``dag`` is given)."""
        g, v = settings.gpu_sharing, settings.vertical
        pinned = {} if dag is None else {
            dag.function_name(n): dag.spec(n).gpu_memory_mb for n in dag.experts
            if dag.spec(n).gpu_memory_mb > 0}
        return cls(mode=g.mode, slots_per_gpu=g.slots_per_gpu, pinned_mb=MappingProxyType(pinned),
                   gpu_resource=v.gpu_resource,
                   mps_pool_label=v.mps_pool_label,
                   in_place_resize=settings.cluster.in_place_resize,
                   in_place_memory_decrease=settings.cluster.in_place_memory_decrease,
                   pause_scaledobject=settings.guards.pause_scaledobject_during_rollout,
                   deferred_grace_s=v.resize_deferred_grace_s)


@dataclass(frozen=True, slots=True)
class Plan:
    """The patches, in order, and notes on what was left alone and why."""

    patches: tuple[Patch, ...]
    notes: tuple[str, ...] = ()


def plan_patches(experts: Mapping[str, ExpertKnobs], state: PipelineState, *,
                 functions: Mapping[str, str], rules: PlanRules, now: float) -> Plan:
    """The patches that bring the pipeline's functions to the decided knobs.

    Args:
        experts: node id -> decided knobs (``PipelineDecision.experts``).
        state: the pipeline's functions as they are now.
        functions: node id -> function name, for every node the pipeline names.
        rules: see :class:`PlanRules`.
        now: Unix seconds, to age ``Deferred`` resizes.

    Raises:
        ConfigError: the decision names a node the pipeline does not have.
    """
    unknown = [n for n in experts if n not in functions]
    if unknown:
        raise ConfigError([Problem(f"experts.{n}", "not a node of pipeline "
                                   f"{state.pipeline!r}") for n in unknown])
    patches: list[Patch] = []
    notes = [f"{f}: not planned ({why})" for f, why in sorted(state.missing.items())]
    free_gpus = state.free_gpus
    order = {node: i for i, node in enumerate(functions)}
    for node in sorted(experts, key=order.__getitem__):
        function = functions[node]
        live = state.functions.get(function)
        if live is None:
            if function not in state.missing:
                notes.append(f"{function}: not planned (no live state)")
            continue
        if str(live.labels.get(SCALE_ZERO_LABEL, "")).lower() == "true":
            notes.append(f"{function}: label {SCALE_ZERO_LABEL}=true: OpenFaaS Pro's idler "
                         "would scale this expert to zero behind sMoE's back; remove it "
                         "(docs/install.md)")
        d = experts[node]
        want = Knobs(cpu=float(d.cpu), memory_mb=int(d.memory_mb), gpu_share=float(d.gpu_share),
                     concurrency=int(d.concurrency))
        planned, free_gpus = _plan_function(node, live, want, rules, now, free_gpus, notes)
        patches += planned
    result = Plan(tuple(patches), tuple(notes))
    check_scope(result.patches, set(functions.values()))
    return result


def _plan_function(node: str, live: FunctionState, want: Knobs, rules: PlanRules, now: float,
                   free_gpus: float | None, notes: list[str]) -> tuple[list[Patch], float | None]:
    in_place = rules.in_place_resize and live.writer in ("deployment", "function", "simulated")
    stuck = [p.name for p in live.pods if _resize_stuck(p, rules, now)]
    if stuck:
        notes.append(f"{live.function}: resize pending on {', '.join(stuck)}; rolling out")
    lowers = in_place and _lowers_memory_limit(live, want, rules)
    if lowers:
        notes.append(f"{live.function}: memory {live.knobs.memory_mb} -> {want.memory_mb} MiB "
                     "lowers a memory limit, which this cluster does not do in place "
                     "(cluster.in_place_memory_decrease); rolling out")
    rollout, free_gpus = rollout_patch(node, live, want, rules, force=bool(stuck),
                                       resources_are_slow=not in_place or bool(stuck) or lowers,
                                       free_gpus=free_gpus, notes=notes)
    patches: list[Patch] = []
    if rollout is not None:
        patches.append(rollout)
        if rules.pause_scaledobject and live.scaledobject and not live.paused_by_us:
            patches.append(pause_patch(node, live, paused=True))
    else:
        if in_place and live.writer == "simulated":
            sim = sim_in_place_patch(node, live, want)
            patches += [sim] if sim is not None else []
        elif in_place:
            for pod in live.pods:
                if not pod.running:
                    continue
                if _needs_resize(pod.container, want):
                    patches.append(resize_patch(node, live, pod, want))
        if rules.pause_scaledobject and live.paused_by_us and live.rollout_done:
            patches.append(pause_patch(node, live, paused=False))
    return patches, free_gpus


def _needs_resize(container: Mapping[str, Any], want: Knobs) -> bool:
    cpu, mem = resources_of(container)
    return ((cpu is not None and round(cpu * 1000) != round((want.cpu or 0) * 1000))
            or (mem is not None and mem != want.memory_mb))


def _lowers_memory_limit(live: FunctionState, want: Knobs, rules: PlanRules) -> bool:
    """Whether ``want`` lowers a memory limit, which Kubernetes before 1.35 refuses in place."""
    if rules.in_place_memory_decrease or want.memory_mb is None:
        return False
    have = live.knobs.memory_mb
    if have is None or want.memory_mb >= have:
        return False
    if live.writer == "simulated":
        return True
    limits = (live.container.get("resources") or {}).get("limits") or {}
    return "memory" in limits


def _resize_stuck(pod: Any, rules: PlanRules, now: float) -> bool:
    if pod.resize_pending in ("Infeasible", "Error"):
        return True
    if pod.resize_pending == "Deferred":
        since = pod.resize_pending_since
        return since is None or now - since >= rules.deferred_grace_s
    return False


def check_scope(patches: tuple[Patch, ...] | list[Patch], functions: set[str]) -> None:
    """Refuse any patch whose function the pipeline does not name (a bug, not bad input)."""
    stray = sorted({str(p.target) for p in patches if p.function not in functions})
    if stray:
        raise RuntimeError(f"patches outside the pipeline: {', '.join(stray)}")
