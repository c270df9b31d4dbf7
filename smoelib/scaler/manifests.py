"""KEDA ScaledObjects for a pipeline's experts, as plain dicts: one per expert, none elsewhere.

Pure: builds objects from a :class:`~smoelib.pipeline.topology.PipelineDAG` and
:class:`~smoelib.settings.Settings`; writing them is :mod:`smoelib.commands.manifests`.

Each ScaledObject targets the expert's function Deployment with one ``external-push`` trigger
whose metadata (``pipeline``, ``expert``) names what the scaler answers for. The HPA defaults
fight a policy that dictates replica counts (research note ``keda.md`` sections 3 and 7), so the
behavior is set explicitly: tolerance 0 where the cluster honours it, no stabilization window,
scaling policies that never cap the guards' largest step, and ``pollingInterval`` and
``cooldownPeriod`` in units of the control interval.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import yaml

from smoelib.core.keda import (
    cooldown_period_s,
    fallback_replicas,
    polling_interval_s,
    scale_up_pods,
)
from smoelib.errors import PipelineError, Problem
from smoelib.pipeline.topology import PipelineDAG
from smoelib.settings import Settings

__all__ = ["SCALED_OBJECT_NAME_MAX", "kustomization", "render_yaml", "scaled_object",
           "scaled_objects", "file_name"]

SCALED_OBJECT_NAME_MAX = 54
"""KEDA names the HPA ``keda-hpa-<name>``, which must fit a 63-character DNS label."""
TRIGGER_TYPE = "external-push"
MANAGED_BY = "smoe"
PIPELINE_LABEL = "smoe.io/pipeline"
EXPERT_ANNOTATION = "smoe.io/expert"


def _behavior(settings: Settings) -> dict[str, Any]:
    period = settings.manifests.hpa_period_s
    up: dict[str, Any] = {
        "stabilizationWindowSeconds": 0,
        "selectPolicy": "Max",
        "policies": [{"type": "Pods", "value": scale_up_pods(settings), "periodSeconds": period},
                     {"type": "Percent", "value": 100, "periodSeconds": period}],
    }
    # A decrease is already capped by guards.max_step_down; the HPA may follow it at once.
    down: dict[str, Any] = {
        "stabilizationWindowSeconds": 0,
        "selectPolicy": "Max",
        "policies": [{"type": "Percent", "value": 100, "periodSeconds": period}],
    }
    if settings.cluster.hpa_configurable_tolerance:
        # Without it the cluster-wide 10% deadband swallows +-1 moves above ~10 replicas.
        up["tolerance"] = 0
        down["tolerance"] = 0
    return {"scaleUp": up, "scaleDown": down}


def scaled_object(dag: PipelineDAG, node: str, settings: Settings) -> dict[str, Any]:
    """The ScaledObject of expert ``node``, named after its function (its Deployment).

    Raises:
        PipelineError: ``node`` is not an expert, or its function name is longer than
            :data:`SCALED_OBJECT_NAME_MAX` (possible only for a DAG built without validation).
    """
    spec = dag.spec(node)
    name = spec.function
    where = f"stages[{dag.stages.index(spec.stage)}]" if spec.stage in dag.stages else node
    if spec.kind != "expert" or name is None:
        raise PipelineError([Problem(where, f"{node!r} is a {spec.kind}, not an expert: "
                                            "sMoE scales experts only")], source=dag.source)
    if len(name) > SCALED_OBJECT_NAME_MAX:
        raise PipelineError([Problem(f"{where}.function", (
            f"function name {name!r} has {len(name)} characters; its ScaledObject's HPA "
            f"keda-hpa-<name> needs at most {SCALED_OBJECT_NAME_MAX}"))], source=dag.source)
    trigger: dict[str, Any] = {
        "type": TRIGGER_TYPE,
        "metricType": "AverageValue",
        "metadata": {"scalerAddress": settings.manifests.scaler_address,
                     "pipeline": dag.name, "expert": node},
    }
    if settings.manifests.use_cached_metrics:
        trigger["useCachedMetrics"] = True
    return {
        "apiVersion": "keda.sh/v1alpha1",
        "kind": "ScaledObject",
        "metadata": {
            "name": name,
            "namespace": dag.namespace,
            "labels": {"app.kubernetes.io/managed-by": MANAGED_BY, PIPELINE_LABEL: dag.name},
            "annotations": {EXPERT_ANNOTATION: node},
        },
        "spec": {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": name},
            "pollingInterval": polling_interval_s(settings),
            "cooldownPeriod": cooldown_period_s(settings),
            "minReplicaCount": spec.replicas_min,
            "maxReplicaCount": spec.replicas_max,
            "fallback": {"failureThreshold": settings.manifests.fallback_failures,
                         "replicas": fallback_replicas(spec, settings),
                         "behavior": "currentReplicasIfHigher"},
            "advanced": {"horizontalPodAutoscalerConfig": {"behavior": _behavior(settings)}},
            "triggers": [trigger],
        },
    }


def scaled_objects(dag: PipelineDAG, settings: Settings) -> list[dict[str, Any]]:
    """One ScaledObject per expert of ``dag``, in the DAG's expert order; none for segments."""
    return [scaled_object(dag, node, settings) for node in dag.experts]


def file_name(obj: Mapping[str, Any]) -> str:
    """The file one object is written to: ``<name>.yaml``."""
    return f"{obj['metadata']['name']}.yaml"


def kustomization(files: Iterable[str]) -> dict[str, Any]:
    """A kustomization listing ``files`` as resources (no ``namespace:``: objects carry theirs)."""
    return {"apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization",
            "resources": list(files)}


def render_yaml(objects: Sequence[Mapping[str, Any]]) -> str:
    """Objects as one multi-document YAML text, keys in construction order."""
    return "---\n".join(yaml.safe_dump(dict(o), sort_keys=False) for o in objects)
