"""Kubernetes objects (plain JSON) -> the planner's live state. Pure.

An OpenFaaS function is a Deployment named after it, labelled ``faas_function``, with one
container named after the function. When an OpenFaaS ``Function`` resource owns the Deployment
(operator mode) the Function is the writer; otherwise sMoE patches the Deployment itself.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Any

from smoelib.vertical.planner_writers import PAUSED_BY_US_ANNOTATION
from smoelib.vertical.records import FunctionState, PodState
from smoelib.vertical.template import SharingRules, read_knobs

__all__ = ["function_state", "pod_state", "container_index", "owned_by_function",
           "scaledobjects_by_target"]


def container_index(containers: list[Mapping[str, Any]], function: str) -> int | None:
    """Index of the function's container: the one named after it, else the only one."""
    for i, c in enumerate(containers):
        if c.get("name") == function:
            return i
    return 0 if len(containers) == 1 else None


def owned_by_function(deployment: Mapping[str, Any]) -> bool:
    """Whether an OpenFaaS ``Function`` resource owns (and regenerates) the Deployment."""
    return any(ref.get("kind") == "Function" and str(ref.get("apiVersion", "")).startswith(
        "openfaas.com/") for ref in deployment.get("metadata", {}).get("ownerReferences") or ())


def pod_state(pod: Mapping[str, Any], function: str) -> PodState | None:
    """A pod's state, or None when it is going away or has no function container."""
    meta, spec, status = pod.get("metadata", {}), pod.get("spec", {}), pod.get("status") or {}
    if meta.get("deletionTimestamp"):
        return None
    containers = spec.get("containers") or []
    i = container_index(containers, function)
    if i is None:
        return None
    conditions = {c.get("type"): c for c in status.get("conditions") or ()}
    pending = conditions.get("PodResizePending")
    progress = conditions.get("PodResizeInProgress")
    if pending is None and progress is not None and progress.get("reason") == "Error":
        pending = progress  # the kubelet tried and failed: as stuck as an Infeasible one
    ready = conditions.get("Ready", {}).get("status") == "True"
    since = _timestamp(pending.get("lastTransitionTime")) if pending else None
    return PodState(name=meta["name"], container=containers[i], container_index=i,
                    running=status.get("phase", "Running") == "Running", ready=ready,
                    resize_pending=pending.get("reason") if pending else None,
                    resize_pending_since=since)


def function_state(function: str, deployment: Mapping[str, Any], pods: Iterable[Mapping],
                   *, rules: SharingRules, function_cr: Mapping[str, Any] | None = None,
                   scaledobject: tuple[str, bool] | None = None) -> FunctionState:
    """The live state of one function from its Deployment, its pods and (operator mode) its
    ``Function`` resource. ``scaledobject`` is (name, paused by sMoE)."""
    meta, spec = deployment.get("metadata", {}), deployment.get("spec", {})
    status = deployment.get("status") or {}
    template = spec.get("template", {})
    pod_spec = template.get("spec", {})
    containers = pod_spec.get("containers") or []
    i = container_index(containers, function)
    if i is None:
        raise ValueError(f"deployment {meta.get('namespace')}/{function} has no container "
                         f"named {function!r} and more than one container")
    container = containers[i]
    selector = dict(pod_spec.get("nodeSelector") or {})
    replicas = int(spec.get("replicas", 1))
    generation = int(meta.get("generation", 0))
    done = (int(status.get("observedGeneration", generation)) >= generation
            and int(status.get("updatedReplicas", replicas)) == replicas
            and int(status.get("availableReplicas", replicas)) == replicas)
    live_pods = tuple(p for p in (pod_state(p, function) for p in pods) if p is not None)
    common: dict[str, Any] = dict(
        function=function, namespace=meta.get("namespace", ""), replicas=replicas,
        ready_replicas=int(status.get("readyReplicas", 0)), pods=live_pods,
        node_selector=selector, rollout_done=done,
        scaledobject=scaledobject[0] if scaledobject else None,
        paused_by_us=bool(scaledobject and scaledobject[1]),
        labels={**dict(meta.get("labels") or {}),
                **dict(template.get("metadata", {}).get("labels") or {})})
    if function_cr is not None:
        cr = function_cr.get("spec", {})
        env = {k: str(v) for k, v in (cr.get("environment") or {}).items()}
        synthetic = {"env": [{"name": k, "value": v} for k, v in env.items()],
                     "resources": {s: cr[s] for s in ("requests", "limits") if cr.get(s)}}
        return FunctionState(writer="function", knobs=read_knobs(synthetic, selector, rules),
                             env=env, spec=cr, container=container, container_index=i,
                             resource_version=function_cr.get("metadata", {}).get(
                                 "resourceVersion"), **common)
    env = {e["name"]: str(e["value"]) if "value" in e else "<valueFrom>"
           for e in container.get("env") or () if "name" in e}
    return FunctionState(writer="deployment", knobs=read_knobs(container, selector, rules),
                         env=env, container=container, container_index=i,
                         strategy=dict(spec.get("strategy") or {}),
                         template_annotations=dict(template.get("metadata", {}).get(
                             "annotations") or {}),
                         resource_version=meta.get("resourceVersion"), **common)


def scaledobjects_by_target(items: Iterable[Mapping[str, Any]]) -> dict[str, tuple[str, bool]]:
    """Deployment name -> (ScaledObject name, paused by sMoE) for every ScaledObject listed."""
    out: dict[str, tuple[str, bool]] = {}
    for so in items:
        target = (so.get("spec", {}).get("scaleTargetRef") or {}).get("name")
        annotations = so.get("metadata", {}).get("annotations") or {}
        if target:
            out[target] = (so["metadata"]["name"],
                           annotations.get(PAUSED_BY_US_ANNOTATION) == "true")
    return out


def _timestamp(text: str | None) -> float | None:
    if not text:
        return None
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None
