"""The generated ScaledObjects: one per expert and none elsewhere, valid against KEDA's CRD, with
the HPA behavior, fallback, polling and cooldown the design asks for."""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path

import jsonschema
import pytest
import yaml

from smoelib.core.keda import fallback_replicas, scale_up_pods
from smoelib.errors import PipelineError
from smoelib.scaler.manifests import (
    SCALED_OBJECT_NAME_MAX,
    kustomization,
    render_yaml,
    scaled_object,
    scaled_objects,
)
from smoelib.settings import load_settings
from smoelib.sim.autoscaling import keda_polling_s, smoe_behaviour
from smoelib.topology import build_dag

ROOT = Path(__file__).resolve().parents[2]
PIPELINES = ROOT / "examples" / "pipelines"
CRD = ROOT / "tests" / "schemas" / "keda.sh_scaledobjects.yaml"  # vendored: tests/schemas


def crd_schema() -> dict:
    crd = yaml.safe_load(CRD.read_text())
    (version,) = [v for v in crd["spec"]["versions"] if v["name"] == "v1alpha1"]
    return version["schema"]["openAPIV3Schema"]


def unknown_fields(obj, schema, path="") -> list[str]:
    """Keys the structural schema does not declare (the API server would prune them silently)."""
    if isinstance(obj, dict) and "properties" in schema:
        found = []
        for key, value in obj.items():
            if key in schema["properties"]:
                found += unknown_fields(value, schema["properties"][key], f"{path}.{key}")
            elif not schema.get("additionalProperties") and not schema.get(
                    "x-kubernetes-preserve-unknown-fields"):
                found.append(f"{path}.{key}")
        return found
    if isinstance(obj, list) and "items" in schema:
        return [f for i, item in enumerate(obj) for f in unknown_fields(item, schema["items"],
                                                                      f"{path}[{i}]")]
    return []


@pytest.fixture(scope="module")
def schema():
    return crd_schema()


@pytest.fixture(scope="module")
def validator(schema):
    return jsonschema.Draft202012Validator(schema)


@pytest.fixture(scope="module")
def bert():
    return build_dag(config=PIPELINES / "bert-moe.yml", validate=True, attach_metadata=True)


def test_one_scaled_object_per_expert_and_none_elsewhere(bert):
    objects = scaled_objects(bert, load_settings())
    assert len(objects) == len(bert.experts) == 72
    targets = [o["spec"]["scaleTargetRef"]["name"] for o in objects]
    assert targets == [bert.function_name(n) for n in bert.experts]
    others = {bert.function_name(n) for n in (*bert.segments, *bert.joins)} - {None}
    assert others and not others & set(targets)
    assert len(set(o["metadata"]["name"] for o in objects)) == 72


@pytest.mark.parametrize("pipeline", ["bert-moe.yml", "gpt2-moe.yml", "bert2bert-moe.yml"])
def test_every_scaled_object_validates_against_the_keda_crd(pipeline, schema, validator):
    dag = build_dag(config=PIPELINES / pipeline, validate=True, attach_metadata=True)
    for obj in scaled_objects(dag, load_settings()):
        validator.validate(obj)
        assert unknown_fields(obj, schema) == []
        spec = obj["spec"]
        assert spec["minReplicaCount"] <= spec["maxReplicaCount"]  # the CRD's CEL rule
        assert len(obj["metadata"]["name"]) <= SCALED_OBJECT_NAME_MAX
        assert len(f"keda-hpa-{obj['metadata']['name']}") <= 63


def test_trigger_carries_scaler_address_pipeline_and_expert(bert):
    settings = load_settings()
    obj = scaled_object(bert, "moe3/e5", settings)
    (trigger,) = obj["spec"]["triggers"]
    assert trigger["type"] == "external-push"
    assert trigger["metadata"] == {"scalerAddress": "smoe-scaler.smoe-system.svc:9090",
                                   "pipeline": "bert-moe", "expert": "moe3/e5"}
    assert all(isinstance(v, str) for v in trigger["metadata"].values())
    assert obj["metadata"]["namespace"] == bert.namespace == "openfaas-fn"
    assert obj["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment",
                                             "name": "bert-moe-moe3-e5"}


def test_replica_bounds_come_from_the_pipeline():
    dag = build_dag(config={
        "name": "p", "slo_ms": 50,
        "defaults": {"expert": {"replicas": {"min": 1, "max": 12}}},
        "stages": [{"id": "a", "kind": "segment"},
                   {"id": "m", "kind": "moe", "experts": 2, "top_k": 1,
                    "overrides": {1: {"replicas": {"min": 0, "max": 3}}}}]})
    objects = {o["metadata"]["annotations"]["smoe.io/expert"]: o["spec"]
               for o in scaled_objects(dag, load_settings())}
    assert set(objects) == {"m/e0", "m/e1"}
    assert (objects["m/e0"]["minReplicaCount"], objects["m/e0"]["maxReplicaCount"]) == (1, 12)
    assert (objects["m/e1"]["minReplicaCount"], objects["m/e1"]["maxReplicaCount"]) == (0, 3)


def test_hpa_behavior_has_no_deadband_no_window_and_room_for_the_largest_step(bert):
    settings = load_settings()
    behavior = scaled_object(bert, "moe1/e0", settings)["spec"]["advanced"][
        "horizontalPodAutoscalerConfig"]["behavior"]
    for direction in ("scaleUp", "scaleDown"):
        assert behavior[direction]["tolerance"] == 0
        assert behavior[direction]["stabilizationWindowSeconds"] == 0
    pods = [p for p in behavior["scaleUp"]["policies"] if p["type"] == "Pods"]
    (policy,) = pods
    assert behavior["scaleUp"]["selectPolicy"] == "Max"
    period = policy["periodSeconds"]
    assert period == settings.manifests.hpa_period_s
    largest_step = max(settings.guards.max_step_up, settings.actions.max_replica_step)
    ticks = math.ceil(period / settings.control.interval_s)
    assert policy["value"] == scale_up_pods(settings) >= largest_step * ticks
    assert {"type": "Percent", "value": 100, "periodSeconds": period} in (
        behavior["scaleDown"]["policies"])


def test_tolerance_left_out_where_the_cluster_lacks_the_gate(bert, validator):
    settings = load_settings({"cluster": {"hpa_configurable_tolerance": False}})
    obj = scaled_object(bert, "moe1/e0", settings)
    behavior = obj["spec"]["advanced"]["horizontalPodAutoscalerConfig"]["behavior"]
    assert "tolerance" not in behavior["scaleUp"] and "tolerance" not in behavior["scaleDown"]
    validator.validate(obj)


def test_polling_and_cooldown_follow_the_control_interval(bert):
    settings = load_settings({"control": {"interval_s": 2.5},
                              "manifests": {"cooldown_ticks": 3}})
    spec = scaled_object(bert, "moe1/e0", settings)["spec"]
    assert spec["pollingInterval"] == 3          # whole seconds, rounded up
    assert spec["cooldownPeriod"] == 8           # 3 ticks of 2.5 s, rounded up
    spec = scaled_object(bert, "moe1/e0", load_settings())["spec"]
    assert (spec["pollingInterval"], spec["cooldownPeriod"]) == (5, 10)


def test_fallback_never_scales_down_and_holds_a_safe_floor(bert):
    settings = load_settings()
    spec = bert.spec("moe1/e0")                  # replicas 0..8, fraction 0.25
    fallback = scaled_object(bert, "moe1/e0", settings)["spec"]["fallback"]
    assert fallback == {"failureThreshold": 3, "replicas": 2,
                        "behavior": "currentReplicasIfHigher"}
    assert fallback_replicas(spec, settings) == 2
    tiny = replace(spec, replicas_min=0, replicas_max=1)
    assert fallback_replicas(tiny, settings) == 1            # at least one, never zero
    high_min = replace(spec, replicas_min=5, replicas_max=8)
    assert fallback_replicas(high_min, settings) == 5        # never below the minimum
    full = load_settings({"manifests": {"fallback_fraction": 1.0}})
    assert fallback_replicas(spec, full) == 8                # never above the maximum


def test_segments_and_long_names_are_refused(bert):
    with pytest.raises(PipelineError, match="not an expert"):
        scaled_object(bert, "attn1", load_settings())
    long_name = "f" * (SCALED_OBJECT_NAME_MAX + 1)
    dag = build_dag(config={
        "name": "p", "slo_ms": 50,
        "stages": [{"id": "m", "kind": "moe", "experts": 1, "top_k": 1,
                    "overrides": {0: {"function": long_name}}}]},
        validate=False, attach_metadata=True)
    with pytest.raises(PipelineError, match="keda-hpa"):
        scaled_objects(dag, load_settings())


def test_metric_names_the_scaler_advertises_fit_its_rules(bert):
    # The scaler names an expert's metric {pipeline}-{node with '/' -> '-'}, lower-case.
    for node in bert.experts:
        metric = f"{bert.name}-{node.replace('/', '-')}".lower()
        assert metric.replace("-", "").isalnum() and metric == metric.lower()


def test_rendered_yaml_round_trips(bert):
    objects = scaled_objects(bert, load_settings())[:3]
    assert list(yaml.safe_load_all(render_yaml(objects))) == objects
    k = kustomization(["a.yaml", "b.yaml"])
    assert k["resources"] == ["a.yaml", "b.yaml"] and "namespace" not in k


@pytest.mark.parametrize("overrides", [
    {}, {"control": {"interval_s": 2.5}, "manifests": {"hpa_period_s": 30, "cooldown_ticks": 4}},
    {"cluster": {"hpa_configurable_tolerance": False}}])
def test_the_simulated_smoe_preset_is_what_the_scaled_objects_say(bert, overrides):
    settings = load_settings(overrides)
    spec = scaled_object(bert, "moe1/e0", settings)["spec"]
    up = spec["advanced"]["horizontalPodAutoscalerConfig"]["behavior"]["scaleUp"]
    pods = next(p for p in up["policies"] if p["type"] == "Pods")
    percent = next(p for p in up["policies"] if p["type"] == "Percent")
    sim = smoe_behaviour(settings)
    assert keda_polling_s(settings) == spec["pollingInterval"]
    assert sim.cooldown_s == spec["cooldownPeriod"]
    assert (sim.scale_up_pods, sim.scale_up_percent) == (pods["value"], percent["value"])
    assert sim.scale_up_period_s == pods["periodSeconds"] == percent["periodSeconds"]
    assert sim.scale_down_window_s == up["stabilizationWindowSeconds"] == 0
    assert sim.tolerance == up.get("tolerance", 0.1)  # left out: the cluster's 10 % applies
