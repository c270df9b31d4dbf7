"""The vertical planner's rules, one test each, on OpenFaaS-shaped objects."""

from __future__ import annotations

import jsonpatch
import pytest
import yaml

from smoelib.core.decisions import ExpertDecision
from smoelib.errors import ConfigError
from smoelib.vertical import PipelineState, PlanRules, check_scope, plan_patches, plan_to_yaml
from smoelib.vertical.backends.kubernetes_state import function_state
from smoelib.vertical.records import FunctionState, Knobs
from tests.integration.k8s_fixtures import openfaas_deployment, openfaas_pod

NS = "openfaas-fn"
DEFAULT = PlanRules()
NOW = 1_900_000_000.0
FUNCTIONS = {"moe1/e0": "bert-moe-moe1-e0", "moe1/e1": "bert-moe-moe1-e1"}
LIVE_ENV = {"max_inflight": "4", "CUDA_MPS_ACTIVE_THREAD_PERCENTAGE": "25"}


def expert(cpu=1.0, memory_mb=2048, gpu_share=0.25, concurrency=4):
    return ExpertDecision(replicas=2, cpu=cpu, memory_mb=memory_mb, gpu_share=gpu_share,
                          concurrency=concurrency)


def state(*, ready=2, pods=2, rules=DEFAULT, free_gpus=None, resize_pending=None,
          scaledobject=None, **kw):
    fs = {}
    for name in FUNCTIONS.values():
        dep = openfaas_deployment(name, replicas=ready, env=LIVE_ENV, **kw)
        pod_objs = [openfaas_pod(dep, i, resize_pending=resize_pending) for i in range(pods)]
        fs[name] = function_state(name, dep, pod_objs, rules=rules, scaledobject=scaledobject)
    return PipelineState("bert-moe", NS, fs, free_gpus=free_gpus)


def plan(experts, live=None, rules=DEFAULT, now=NOW):
    return plan_patches(experts, live or state(rules=rules), functions=FUNCTIONS, rules=rules,
                        now=now)


def test_identical_decision_plans_nothing():
    assert plan({n: expert() for n in FUNCTIONS}).patches == ()


def test_cpu_and_memory_resize_each_running_pod_in_place_keeping_guaranteed_qos():
    live = state(pods=3)
    p = plan({"moe1/e0": expert(cpu=2.0, memory_mb=4096)}, live).patches
    assert [(x.target.kind, x.subresource) for x in p] == [("Pod", "resize")] * 3
    assert not any(x.rollout for x in p)
    pod = {"spec": {"containers": [dict(live.functions["bert-moe-moe1-e0"].pods[0].container)]}}
    res = jsonpatch.apply_patch(pod, p[0].body)["spec"]["containers"][0]["resources"]
    assert res == {"requests": {"cpu": "2", "memory": "4Gi"}, "limits": {"cpu": "2",
                                                                       "memory": "4Gi"}}
    assert p[0].changes == {"cpu": (1.0, 2.0), "memory_mb": (2048, 4096)}


def test_burstable_pod_keeps_its_limit_ratio_and_pending_pods_are_skipped():
    dep = openfaas_deployment("bert-moe-moe1-e0", env=LIVE_ENV,
                              limits={"cpu": "2", "memory": "3Gi"})
    pods = [openfaas_pod(dep, 0), openfaas_pod(dep, 1, phase="Pending")]
    fs = function_state("bert-moe-moe1-e0", dep, pods, rules=PlanRules())
    live = PipelineState("bert-moe", NS, {fs.function: fs})
    # lowering memory in place needs Kubernetes >= 1.35 (cluster.in_place_memory_decrease)
    p = plan({"moe1/e0": expert(cpu=0.5, memory_mb=1024)}, live,
             rules=PlanRules(in_place_memory_decrease=True)).patches
    assert [x.target.name for x in p] == [fs.pods[0].name]
    res = p[0].body[1]["value"]
    assert res == {"requests": {"cpu": "500m", "memory": "1Gi"},
                   "limits": {"cpu": "1", "memory": "1536Mi"}}


def test_slow_knobs_patch_the_template_with_the_whole_container_and_keep_image_and_env():
    p = plan({"moe1/e0": expert(gpu_share=0.5, concurrency=8)}).patches
    assert len(p) == 1 and p[0].target.kind == "Deployment" and p[0].rollout
    dep = openfaas_deployment("bert-moe-moe1-e0", env=LIVE_ENV)
    new = jsonpatch.apply_patch(dep, p[0].body)
    c = new["spec"]["template"]["spec"]["containers"][0]
    old = dep["spec"]["template"]["spec"]["containers"][0]
    assert c["image"] == old["image"] and c["resources"] == old["resources"]
    assert c["env"] == [{"name": "fprocess", "value": "python index.py"},
                        {"name": "max_inflight", "value": "8"},
                        {"name": "CUDA_MPS_ACTIVE_THREAD_PERCENTAGE", "value": "50"}]
    assert p[0].changes["env.max_inflight"] == ("4", "8") and p[0].pods_replaced == 2


def test_template_catches_up_cpu_only_when_a_rollout_happens_anyway():
    p = plan({"moe1/e0": expert(cpu=2.0, concurrency=8)}).patches
    assert [x.target.kind for x in p] == ["Deployment"]
    c = p[0].body[1]["value"]
    assert c["resources"]["requests"]["cpu"] == "2" and "cpu" in p[0].changes


def test_without_in_place_resize_cpu_is_a_slow_knob():
    rules = PlanRules(in_place_resize=False)
    p = plan({"moe1/e0": expert(cpu=2.0)}, rules=rules).patches
    assert [x.target.kind for x in p] == ["Deployment"] and p[0].rollout


@pytest.mark.parametrize("free_gpus,ready,expected", [
    (1.0, 2, {"maxSurge": 1, "maxUnavailable": 0}),    # a GPU slot is free: surge
    (None, 2, {"maxSurge": 0, "maxUnavailable": 1}),   # none free: one at a time
    (0.0, 1, {"maxSurge": 1, "maxUnavailable": 0}),    # never take the only ready replica down
])
def test_rollout_strategy_keeps_capacity(free_gpus, ready, expected):
    live = state(ready=ready, free_gpus=free_gpus)
    p = plan({"moe1/e0": expert(gpu_share=0.5)}, live)
    strategy = p.patches[0].changes.get("strategy", (None, {"rollingUpdate": expected}))[1]
    assert strategy["rollingUpdate"] == expected
    if ready == 1:
        assert any("only one ready replica" in n or "ready one stays up" in n for n in p.notes)


def test_surges_spend_the_free_gpu_capacity():
    live = state(free_gpus=0.5)
    p = plan({n: expert(gpu_share=0.5) for n in FUNCTIONS}, live).patches
    steps = [x.changes.get("strategy", (None, {"rollingUpdate": {"maxSurge": 1}}))[1]
             ["rollingUpdate"]["maxSurge"] for x in p]
    assert steps == [1, 0]


def test_the_pinned_device_memory_limit_is_the_experts_own_setting_not_the_memory_knob():
    from types import MappingProxyType

    rules = PlanRules(pinned_mb=MappingProxyType({"bert-moe-moe1-e0": 6000}))
    p = plan({"moe1/e0": expert(memory_mb=1024)}, state(rules=rules), rules=rules).patches
    assert p[0].changes["env.CUDA_MPS_PINNED_DEVICE_MEM_LIMIT"] == (None, "0=6000MB")
    from smoelib.topology import build_dag

    dag = build_dag({"name": "p", "slo_ms": 10, "stages": [
        {"id": "m", "experts": 2, "overrides": {1: {"gpu_memory_mb": 5120}}}]})
    from smoelib.settings import Settings

    assert PlanRules.from_settings(Settings(), dag=dag).pinned_mb == {"p-m-e1": 5120}


def test_cpu_only_expert_drops_the_thread_percentage():
    p = plan({"moe1/e0": expert(gpu_share=0.0)}).patches
    names = [e["name"] for e in p[0].body[1]["value"]["env"]]
    assert "CUDA_MPS_ACTIVE_THREAD_PERCENTAGE" not in names and "max_inflight" in names


def test_device_plugin_mode_sets_the_gpu_slot_and_the_node_pool():
    rules = PlanRules(mode="mps-device-plugin", mps_pool_label="smoe.io/mps-slots")
    p = plan({"moe1/e0": expert(gpu_share=0.25)}, state(rules=rules), rules=rules).patches
    dep = jsonpatch.apply_patch(openfaas_deployment("bert-moe-moe1-e0", env=LIVE_ENV),
                                p[0].body)
    pod_spec = dep["spec"]["template"]["spec"]
    assert pod_spec["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert pod_spec["nodeSelector"] == {"smoe.io/mps-slots": "4"}
    again = function_state("bert-moe-moe1-e0", dep, [], rules=rules)
    assert again.knobs.gpu_share == 0.25
    live = PipelineState("bert-moe", NS, {again.function: again})
    assert plan({"moe1/e0": expert(gpu_share=0.25)}, live, rules=rules).patches == ()


def test_infeasible_resize_falls_back_to_a_rollout():
    live = state(resize_pending="Infeasible", cpu="2")
    p = plan({"moe1/e0": expert(cpu=2.0)}, live)
    assert [x.target.kind for x in p.patches] == ["Deployment"]
    assert "annotations.smoe.io/resize-fallback" in p.patches[0].changes
    assert any("resize pending" in n for n in p.notes)


def test_deferred_resize_waits_for_its_grace_then_rolls():
    rules = PlanRules(deferred_grace_s=60.0)
    live = state(resize_pending="Deferred", cpu="2")
    since = live.functions["bert-moe-moe1-e0"].pods[0].resize_pending_since
    assert plan({"moe1/e0": expert(cpu=2.0)}, live, rules, now=since + 10).patches == ()
    late = plan({"moe1/e0": expert(cpu=2.0)}, live, rules, now=since + 61).patches
    assert [x.target.kind for x in late] == ["Deployment"]


def test_function_resource_writer_gets_a_merge_patch_of_its_environment():
    dep = openfaas_deployment("bert-moe-moe1-e0", owner_function=True)
    cr = {"metadata": {"name": "bert-moe-moe1-e0", "resourceVersion": "7"},
          "spec": {"name": "bert-moe-moe1-e0", "image": "x", "environment": LIVE_ENV,
                   "requests": {"cpu": "1", "memory": "2Gi"}}}
    fs = function_state("bert-moe-moe1-e0", dep, [], rules=PlanRules(), function_cr=cr)
    p = plan({"moe1/e0": expert(concurrency=8)}, PipelineState("bert-moe", NS, {fs.function: fs}))
    assert p.patches[0].target.api == "openfaas.com/v1" and p.patches[0].patch_type == "merge"
    assert p.patches[0].body == {"spec": {"environment": {"max_inflight": "8"}}}


def test_gateway_writer_puts_the_whole_spec_with_its_env():
    spec = {"service": "bert-moe-moe1-e0", "image": "img:1", "envProcess": "python index.py",
            "envVars": {"MODEL": "bert", **LIVE_ENV}, "requests": {"cpu": "1", "memory": "2Gi"}}
    fs = FunctionState("bert-moe-moe1-e0", NS, "gateway", Knobs(1.0, 2048, 0.25, 4),
                       env=spec["envVars"], spec=spec, replicas=2)
    live = PipelineState("bert-moe", NS, {fs.function: fs})
    p = plan({"moe1/e0": expert(concurrency=8, cpu=2.0)}, live).patches
    assert p[0].patch_type == "put" and p[0].body["image"] == "img:1"
    assert p[0].body["envVars"] == {"MODEL": "bert", **LIVE_ENV, "max_inflight": "8"}
    assert p[0].body["requests"] == {"cpu": "2", "memory": "2Gi"}
    assert "smoe.io/managed-env" in p[0].body["annotations"]


def test_scaledobject_is_paused_during_a_rollout_and_resumed_after():
    rules = PlanRules(pause_scaledobject=True)
    p = plan({"moe1/e0": expert(concurrency=8)}, state(scaledobject=("so-e0", False)), rules)
    assert [x.target.kind for x in p.patches] == ["Deployment", "ScaledObject"]
    assert p.patches[1].body["metadata"]["annotations"]["autoscaling.keda.sh/paused"] == "true"
    done = plan({"moe1/e0": expert()}, state(scaledobject=("so-e0", True)), rules).patches
    assert [x.target.kind for x in done] == ["ScaledObject"]
    assert done[0].body["metadata"]["annotations"]["autoscaling.keda.sh/paused"] is None


def test_unknown_node_is_bad_input_and_stray_patches_are_refused():
    with pytest.raises(ConfigError, match="moe9/e0"):
        plan({"moe9/e0": expert()})
    p = plan({"moe1/e0": expert(concurrency=8)}).patches
    with pytest.raises(RuntimeError, match="outside the pipeline"):
        check_scope(p, {"another-function"})


def test_missing_functions_are_noted_not_patched():
    live = PipelineState("bert-moe", NS, {}, missing={"bert-moe-moe1-e0": "not found"})
    p = plan({"moe1/e0": expert(concurrency=8)}, live)
    assert p.patches == () and p.notes == ("bert-moe-moe1-e0: not planned (not found)",)


def test_dry_run_prints_the_plan_as_yaml():
    p = plan({"moe1/e0": expert(concurrency=8)})
    doc = yaml.safe_load(plan_to_yaml(p, pipeline="bert-moe"))
    assert doc["pipeline"] == "bert-moe"
    assert doc["patches"][0]["changes"]["env.max_inflight"] == {"from": "4", "to": "8"}
    assert doc["patches"][0]["target"]["kind"] == "Deployment"


def test_a_function_opted_into_openfaas_scale_to_zero_is_named():
    from smoelib.vertical.backends.kubernetes_state import function_state
    from smoelib.vertical.planner import PlanRules, plan_patches
    from smoelib.vertical.records import PipelineState
    from tests.integration.k8s_fixtures import openfaas_deployment

    dep = openfaas_deployment("f", env={"max_inflight": "4"})
    dep["metadata"]["labels"]["com.openfaas.scale.zero"] = "true"
    state = PipelineState("p", "openfaas-fn", {"f": function_state("f", dep, [],
                                                                   rules=PlanRules())})
    from smoelib.core.decisions import ExpertDecision

    plan = plan_patches({"m/e0": ExpertDecision(2, 1.0, 2048, 0.0, 4)}, state,
                        functions={"m/e0": "f"}, rules=PlanRules(), now=0.0)
    assert any("com.openfaas.scale.zero=true" in n for n in plan.notes)


def test_the_quantity_parser_agrees_with_the_kubernetes_clients():
    """The pure planner may not import the kubernetes client (layering: network only in
    backends), so it parses quantities itself; this pins it to kubernetes.utils.parse_quantity
    over the grammar's suffixes and forms."""
    import itertools

    from kubernetes.utils import parse_quantity

    from smoelib.vertical.units import parse_cpu

    numbers = ["0", "1", "2", "0.5", "1.5", ".25", "12", "1e3", "2.5e-1", "100"]
    suffixes = ["", "m", "k", "M", "G", "T", "Ki", "Mi", "Gi", "Ti"]
    for n, s in itertools.product(numbers, suffixes):
        if "e" in n and s:
            continue  # an exponent takes no suffix in the grammar
        q = n + s
        assert parse_cpu(q) == pytest.approx(float(parse_quantity(q)), rel=1e-12), q
