"""Patch bodies per writer, for :mod:`smoelib.vertical.planner`. Pure.

Kubernetes objects get RFC 6902 JSON patches that replace whole entries (the function's
container, its ``resources``, the rollout strategy) after a ``test`` of the container's name, so
the result is the same on a real API server and on one that merges bodies naively. A known
``resourceVersion`` rides along, which turns a concurrent write into a 409. Custom resources
(``Function``, ``ScaledObject``) get merge patches of maps. The gateway gets the whole spec.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from smoelib.core.accounting import gpu_per_pod
from smoelib.core.knobs import RESOURCE_KNOBS, SLOW_KNOBS
from smoelib.vertical.records import FunctionState, Knobs, ObjectRef, Patch, PodState
from smoelib.vertical.template import (
    SharingRules,
    desired_env,
    desired_gpu,
    qos_keeping,
    resources_of,
    with_env,
)

__all__ = ["WriterRules", "rollout_patch", "resize_patch", "pause_patch", "sim_in_place_patch",
           "MANAGED_ENV_ANNOTATION", "PAUSED_ANNOTATION", "PAUSED_BY_US_ANNOTATION",
           "RESIZE_FALLBACK_ANNOTATION"]

WriterRules = SharingRules
MANAGED_ENV_ANNOTATION = "smoe.io/managed-env"
PAUSED_ANNOTATION = "autoscaling.keda.sh/paused"
PAUSED_BY_US_ANNOTATION = "smoe.io/paused-for-rollout"
RESIZE_FALLBACK_ANNOTATION = "smoe.io/resize-fallback"
_SURGE = {"maxSurge": 1, "maxUnavailable": 0}
_ONE_AT_A_TIME = {"maxSurge": 0, "maxUnavailable": 1}


def rollout_patch(node: str, live: FunctionState, want: Knobs, rules: SharingRules, *,
                  resources_are_slow: bool, force: bool, free_gpus: float | None,
                  notes: list[str]) -> tuple[Patch | None, float | None]:
    """The template change ``want`` needs, or None when no slow knob changes.

    CPU and memory ride along (the template catches up) but start a rollout only when
    ``resources_are_slow``; ``force`` rolls even with nothing else to change (a stuck resize).
    Returns the patch and the free GPU capacity left after its surge pods.
    """
    pinned = rules.pinned_mb.get(live.function, 0)
    env_changes = {k: (live.env.get(k), v) for k, v in desired_env(want, rules,
                                                                     pinned_mb=pinned).items()
                   if live.env.get(k) != v}
    if live.writer == "simulated":
        return _sim_rollout(node, live, want, resources_are_slow=resources_are_slow), free_gpus
    old_res = _resources(live)
    gpu = desired_gpu(want.gpu_share, rules) if live.writer == "deployment" else None
    new_res = qos_keeping(old_res, cpu=want.cpu, memory_mb=want.memory_mb, gpu=gpu,
                          gpu_resource=rules.gpu_resource)
    changes: dict[str, tuple[Any, Any]] = {f"env.{k}": v for k, v in env_changes.items()}
    old_cpu, old_mem = resources_of({"resources": old_res})
    new_cpu, new_mem = resources_of({"resources": new_res})
    res_changes = {k: v for k, v in (("cpu", (old_cpu, new_cpu)), ("memory_mb", (old_mem, new_mem)))
                   if v[0] != v[1]}
    gpu_key = rules.gpu_resource
    old_gpu = (old_res.get("limits") or {}).get(gpu_key)
    if (new_res.get("limits") or {}).get(gpu_key) != old_gpu:
        changes[f"limits.{gpu_key}"] = (old_gpu, (new_res.get("limits") or {}).get(gpu_key))
    selector = dict(live.node_selector)
    if gpu is not None and rules.mps_pool_label:
        if gpu[1] is None:
            selector.pop(rules.mps_pool_label, None)
        else:
            selector[rules.mps_pool_label] = gpu[1]
        if selector != dict(live.node_selector):
            changes["nodeSelector"] = (dict(live.node_selector), selector)
    if resources_are_slow:
        changes.update(res_changes)
    stamp = f"cpu={want.cpu},memory_mb={want.memory_mb}" if force else None
    if stamp is not None and _annotations(live).get(RESIZE_FALLBACK_ANNOTATION) == stamp:
        stamp = None  # this size was rolled out already
    if gpu is None and rules.mode == "mps-device-plugin" and live.writer != "deployment":
        notes.append(f"{live.function}: mps-device-plugin GPU slots change only through "
                     "Deployment patches (OpenFaaS Profiles otherwise); GPU share left alone")
    if not changes and stamp is None:
        return None, free_gpus
    if stamp is not None:
        changes[f"annotations.{RESIZE_FALLBACK_ANNOTATION}"] = (None, stamp)
    for k, v in res_changes.items():
        changes.setdefault(k, v)
    why = (("resize pending; " if force else "")
           + "slow knobs change (" + ", ".join(sorted(changes)) + "): the template changes and "
           f"replaces the function's {live.replicas} pod(s)")
    env = {k: v[1] for k, v in env_changes.items()}
    if live.writer == "deployment":
        strategy, free_gpus = _strategy(live, want, rules, free_gpus, notes)
        if dict(live.strategy) != strategy:
            changes["strategy"] = (dict(live.strategy), strategy)
        body = _deployment_ops(live, env, new_res, selector, strategy, stamp)
        target = ObjectRef("apps/v1", "Deployment", live.namespace, live.function)
        patch = _patch(target, None, "json", body, why, live, node, changes, rollout=True)
        return patch, free_gpus
    if live.writer == "function":
        spec: dict[str, Any] = {"environment": env}
        for side in ("requests", "limits"):
            if new_res.get(side) != old_res.get(side):
                spec[side] = new_res.get(side)
        notes.append(f"{live.function}: the OpenFaaS operator owns the rollout strategy "
                     "(set it with a Profile)")
        if stamp is not None:
            spec["annotations"] = {RESIZE_FALLBACK_ANNOTATION: stamp}
        body = {"spec": spec}
        target = ObjectRef("openfaas.com/v1", "Function", live.namespace, live.function)
        patch = _patch(target, None, "merge", body, why, live, node, changes, rollout=True)
        return patch, free_gpus
    spec = dict(live.spec)
    merged = {k: v for k, v in {**dict(spec.get("envVars") or {}), **env}.items() if v is not None}
    managed = {k: v for k, v in desired_env(want, rules, pinned_mb=pinned).items()
               if v is not None}
    spec["envVars"] = merged
    spec["annotations"] = {**dict(spec.get("annotations") or {}),
                           MANAGED_ENV_ANNOTATION: json.dumps(managed, sort_keys=True)}
    for side in ("requests", "limits"):
        if new_res.get(side):
            spec[side] = new_res[side]
    target = ObjectRef("gateway", "Function", live.namespace, live.function)
    return _patch(target, None, "put", spec, why, live, node, changes, rollout=True), free_gpus


def resize_patch(node: str, live: FunctionState, pod: PodState, want: Knobs) -> Patch:
    """An in-place ``pods/resize`` of ``pod`` to ``want``'s CPU and memory, QoS class kept."""
    old = dict(pod.container.get("resources") or {})
    new = qos_keeping(old, cpu=want.cpu, memory_mb=want.memory_mb)
    i = pod.container_index
    body = [{"op": "test", "path": f"/spec/containers/{i}/name", "value": pod.container["name"]},
            {"op": "replace", "path": f"/spec/containers/{i}/resources", "value": new}]
    (oc, om), (nc, nm) = resources_of(pod.container), resources_of({"resources": new})
    changes = {k: v for k, v in (("cpu", (oc, nc)), ("memory_mb", (om, nm))) if v[0] != v[1]}
    why = "CPU/memory change in place (" + ", ".join(changes) + "); no pod is replaced"
    target = ObjectRef("v1", "Pod", live.namespace, pod.name)
    return _patch(target, "resize", "json", body, why, live, node, changes, rollout=False)


def pause_patch(node: str, live: FunctionState, *, paused: bool) -> Patch:
    """Pause (or resume) the function's ScaledObject around a rollout."""
    value = "true" if paused else None
    body = {"metadata": {"annotations": {PAUSED_ANNOTATION: value,
                                         PAUSED_BY_US_ANNOTATION: value}}}
    why = ("pause KEDA while the function rolls out" if paused
           else "the rollout is done: resume KEDA")
    target = ObjectRef("keda.sh/v1alpha1", "ScaledObject", live.namespace, str(live.scaledobject))
    changes = {f"annotations.{PAUSED_ANNOTATION}": (None if paused else "true", value)}
    return _patch(target, None, "merge", body, why, live, node, changes, rollout=False)


def sim_in_place_patch(node: str, live: FunctionState, want: Knobs) -> Patch | None:
    """The simulator's in-place CPU/memory change, or None when both already match."""
    changes = {k: (live.knobs.get(k), want.get(k)) for k in RESOURCE_KNOBS
               if live.knobs.get(k) != want.get(k)}
    if not changes:
        return None
    target = ObjectRef("sim", "Function", live.namespace, live.function)
    why = "CPU/memory change in place (" + ", ".join(changes) + "); no pod is replaced"
    return _patch(target, "resize", "sim", {k: v[1] for k, v in changes.items()}, why, live,
                  node, changes, rollout=False)


def _sim_rollout(node: str, live: FunctionState, want: Knobs, *, resources_are_slow: bool
                 ) -> Patch | None:
    slow = SLOW_KNOBS + (RESOURCE_KNOBS if resources_are_slow else ())
    changes = {k: (live.knobs.get(k), want.get(k)) for k in slow
               if live.knobs.get(k) != want.get(k)}
    if not changes:
        return None
    for k in RESOURCE_KNOBS:
        if live.knobs.get(k) != want.get(k):
            changes.setdefault(k, (live.knobs.get(k), want.get(k)))
    why = ("slow knobs change (" + ", ".join(sorted(changes)) + f"): replaces the function's "
           f"{live.replicas} pod(s)")
    target = ObjectRef("sim", "Function", live.namespace, live.function)
    return _patch(target, None, "sim", {k: v[1] for k, v in changes.items()}, why, live, node,
                  changes, rollout=True)


def _resources(live: FunctionState) -> dict[str, Any]:
    if live.writer == "deployment":
        return dict(live.container.get("resources") or {})
    return {side: dict(live.spec.get(side) or {}) for side in ("requests", "limits")
            if live.spec.get(side)}


def _annotations(live: FunctionState) -> Mapping[str, str]:
    if live.writer == "deployment":
        return live.template_annotations
    return live.spec.get("annotations") or {}


def _strategy(live: FunctionState, want: Knobs, rules: SharingRules, free_gpus: float | None,
              notes: list[str]) -> tuple[dict[str, Any], float | None]:
    share = want.gpu_share or 0.0
    gpu = rules.mode != "none" and share > 0
    need = gpu_per_pod(share, mode=rules.mode, slots_per_gpu=rules.slots_per_gpu)
    if not gpu:
        step = _SURGE
    elif free_gpus is not None and free_gpus >= need - 1e-9:
        step, free_gpus = _SURGE, free_gpus - need
    elif live.ready_replicas >= 2:
        step = _ONE_AT_A_TIME
    else:
        step = _SURGE
        notes.append(f"{live.function}: no free GPU slot known and at most one ready replica: "
                     "surging (the new pod may wait for a slot; the ready one stays up)")
    return {"type": "RollingUpdate", "rollingUpdate": dict(step)}, free_gpus


def _deployment_ops(live: FunctionState, env: Mapping[str, str | None], resources: Mapping,
                    selector: Mapping[str, str], strategy: Mapping, stamp: str | None) -> list:
    i = live.container_index
    container = with_env(live.container, env)
    container["resources"] = dict(resources)
    base = "/spec/template/spec"
    ops: list[dict[str, Any]] = [
        {"op": "test", "path": f"{base}/containers/{i}/name", "value": live.container["name"]},
        {"op": "replace", "path": f"{base}/containers/{i}", "value": container}]
    if dict(selector) != dict(live.node_selector):
        ops.append({"op": "add", "path": f"{base}/nodeSelector", "value": dict(selector)})
    if dict(live.strategy) != dict(strategy):
        ops.append({"op": "add", "path": "/spec/strategy", "value": dict(strategy)})
    if stamp is not None:
        annotations = {**dict(live.template_annotations), RESIZE_FALLBACK_ANNOTATION: stamp}
        ops.append({"op": "add", "path": "/spec/template/metadata/annotations",
                    "value": annotations})
    if live.resource_version is not None:
        ops.append({"op": "add", "path": "/metadata/resourceVersion",
                    "value": live.resource_version})
    return ops


def _patch(target: ObjectRef, subresource: str | None, patch_type: Any, body: Any, why: str,
           live: FunctionState, node: str, changes: Mapping[str, tuple[Any, Any]], *,
           rollout: bool) -> Patch:
    return Patch(target=target, subresource=subresource, patch_type=patch_type, body=body,
                 reason=why, function=live.function, node=node, changes=dict(changes),
                 pods_replaced=live.replicas if rollout else 0, rollout=rollout)
