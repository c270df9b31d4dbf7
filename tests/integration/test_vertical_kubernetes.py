"""The real ``kubernetes`` client against kmock's emulator holding the bert-moe functions."""

from __future__ import annotations

import time
from pathlib import Path

import kmock
import pytest

from smoelib.core.decisions import parse_decision
from smoelib.topology import build_dag
from smoelib.vertical import PlanRules, plan_patches
from smoelib.vertical.backends.base import apply_plan
from smoelib.vertical.backends.kubernetes import KubernetesBackend
from tests.integration import k8s_fixtures
from tests.integration.k8s_fixtures import (
    DEPLOYMENTS,
    FUNCTIONS,
    PODS,
    SCALEDOBJECTS,
    decision_for,
    openfaas_deployment,
    seed_pipeline,
)
from tests.integration.scaler_fixtures import SteppedClock

pytestmark = pytest.mark.integration
k8s = k8s_fixtures.k8s  # the emulator fixture
ROOT = Path(__file__).resolve().parents[2]
DAG = build_dag(ROOT / "examples" / "pipelines" / "bert-moe.yml", validate=True,
                attach_metadata=True)
NS = DAG.namespace
FNS = {n: DAG.function_name(n) for n in DAG.experts}


class FakeTime:
    """Time for the resize watch: each sleep advances the clock, nothing waits."""

    def __init__(self):
        self.now = 0.0

    def sleep(self, s):
        self.now += s

    def clock(self):
        return self.now


def run(cluster, data, *, rules=None, watch_s=0.0):
    rules = rules or PlanRules()
    decision = parse_decision(data)
    t = FakeTime()
    backend = KubernetesBackend(cluster.api_client, rules=rules, timeout_s=5,
                                scaledobjects=rules.pause_scaledobject, sleep=t.sleep,
                                clock=t.clock)

    def replan(only=None):
        wanted = {n: d for n, d in decision.experts.items() if only is None or FNS[n] in only}
        state = backend.read_state(DAG.name, NS, sorted({FNS[n] for n in wanted}))
        return plan_patches(wanted, state, functions=FNS, rules=rules, now=time.time())

    plan = replan()
    report = apply_plan(plan, backend, replan=replan, conflict_retries=3,
                        resize_watch_s=watch_s)
    return plan, report


def container(cluster, name):
    return cluster.get(DEPLOYMENTS, NS, name)["spec"]["template"]["spec"]["containers"][0]


def env(c):
    return {e["name"]: e["value"] for e in c["env"]}


def test_acceptance_slow_knobs_change_only_the_decided_experts_and_a_rerun_is_empty(k8s):
    deployments = seed_pipeline(k8s, DAG)
    data = decision_for(DAG, moe1__e0={"gpu_share": 0.5, "concurrency": 8},
                        moe3__e2={"concurrency": 2})
    plan, report = run(k8s, data)
    assert sorted(p.target.name for p in plan.patches) == ["bert-moe-moe1-e0", "bert-moe-moe3-e2"]
    assert report.failed == ()
    for name, want in (("bert-moe-moe1-e0", {"max_inflight": "8",
                                             "CUDA_MPS_ACTIVE_THREAD_PERCENTAGE": "50"}),
                       ("bert-moe-moe3-e2", {"max_inflight": "2"})):
        old = deployments[name]["spec"]["template"]["spec"]["containers"][0]
        new = container(k8s, name)
        assert new["image"] == old["image"]
        assert env(new) == {**env(old), **want}
        assert [e["name"] for e in new["env"]] == [e["name"] for e in old["env"]]
    changed = {("bert-moe-moe1-e0"), ("bert-moe-moe3-e2")}
    for (resource, _ns, name), obj in k8s.handler.objects.items():
        if name not in changed:
            assert len(obj.history) == 1, f"{resource.plural} {name} was touched"
    plan2, _ = run(k8s, data)
    assert plan2.patches == ()


def test_cpu_and_memory_resize_pods_in_place_and_leave_the_template(k8s):
    deployments = seed_pipeline(k8s, DAG, pods_per_function=2)
    plan, report = run(k8s, decision_for(DAG, moe2__e1={"cpu": 2.0, "memory_mb": 4096}))
    assert [(o.patch.target.kind, o.patch.subresource, o.status) for o in report.outcomes] == [
        ("Pod", "resize", "applied")] * 2
    pod = k8s.get(PODS, NS, "bert-moe-moe2-e1-7d9f-0")
    assert pod["spec"]["containers"][0]["resources"]["requests"] == {"cpu": "2", "memory": "4Gi"}
    assert k8s.get(DEPLOYMENTS, NS, "bert-moe-moe2-e1") == deployments["bert-moe-moe2-e1"]
    assert run(k8s, decision_for(DAG, moe2__e1={"cpu": 2.0, "memory_mb": 4096}))[0].patches == ()


@pytest.mark.parametrize("condition", [
    {"type": "PodResizePending", "status": "True", "reason": "Infeasible",
     "message": "Node didn't have enough capacity"},
    {"type": "PodResizeInProgress", "status": "True", "reason": "Error",
     "message": "the kubelet could not apply the new resources"},
], ids=["pending-infeasible", "in-progress-error"])
def test_a_failed_resize_falls_back_to_a_rollout(k8s, condition):
    seed_pipeline(k8s, DAG)
    pod_name = "bert-moe-moe1-e3-7d9f-0"

    def failed(request):
        obj = k8s.handler.objects[PODS, NS, pod_name]
        status = dict(obj.raw["status"])
        status["conditions"] = status["conditions"] + [condition]
        obj.patch({"status": status})
        return obj.raw

    k8s.react("patch", PODS, pod_name, subresource="resize", call=failed)
    plan, report = run(k8s, decision_for(DAG, moe1__e3={"cpu": 2.0}), watch_s=1.0)
    kinds = [(o.patch.target.kind, o.status) for o in report.outcomes]
    assert kinds == [("Pod", "applied"), ("Deployment", "applied")]
    c = container(k8s, "bert-moe-moe1-e3")
    assert c["resources"]["requests"]["cpu"] == "2"
    annotations = k8s.get(DEPLOYMENTS, NS, "bert-moe-moe1-e3")["spec"]["template"]["metadata"][
        "annotations"]
    assert annotations["smoe.io/resize-fallback"] == "cpu=2.0,memory_mb=2048"


def test_a_conflict_is_retried_with_fresh_state_keeping_the_other_writers_change(k8s):
    seed_pipeline(k8s, DAG)
    name = "bert-moe-moe1-e0"
    key = (DEPLOYMENTS, NS, name)

    def conflict(request):
        # The emulator stored our write; undo it as a real server would, and let another writer
        # change the container meanwhile.
        history = k8s.handler.objects[key].history
        before = history[-2].raw
        other = dict(before)
        spec = before["spec"]["template"]["spec"]
        c = dict(spec["containers"][0])
        c["env"] = c["env"] + [{"name": "OTHER_WRITER", "value": "1"}]
        other["spec"] = {**before["spec"], "template": {**before["spec"]["template"], "spec": {
            **spec, "containers": [c]}}}
        other["metadata"] = {**before["metadata"], "resourceVersion": "101"}
        k8s.handler.objects[key].patch(other)
        raise kmock.KubernetesError(status=409, reason="Conflict", message="the object has "
                                    "been modified")

    k8s.react("patch", DEPLOYMENTS, name, call=conflict)
    plan, report = run(k8s, decision_for(DAG, moe1__e0={"concurrency": 8}))
    assert [o.status for o in report.outcomes] == ["applied"] and report.failed == ()
    got = env(container(k8s, name))
    assert got["max_inflight"] == "8" and got["OTHER_WRITER"] == "1"
    gets = [r for r in k8s.k8s_requests() if r.method == "GET" and r.name == name]
    assert len(gets) == 2  # read, then re-read after the 409


def test_forbidden_and_missing_objects_are_named_while_the_rest_applies(k8s):
    seed_pipeline(k8s, DAG)
    del k8s.handler.objects[DEPLOYMENTS, NS, "bert-moe-moe2-e0"]
    k8s.react("patch", DEPLOYMENTS, "bert-moe-moe1-e0", status=403)
    data = decision_for(DAG, moe1__e0={"concurrency": 8}, moe1__e1={"concurrency": 8},
                        moe2__e0={"concurrency": 8})
    plan, report = run(k8s, data)
    failed = [o.message for o in report.failed]
    assert failed == ["deployment openfaas-fn/bert-moe-moe1-e0: forbidden: scripted 403"]
    assert any("bert-moe-moe2-e0: not planned (deployment openfaas-fn/bert-moe-moe2-e0: not "
               "found)" == n for n in report.notes)
    assert env(container(k8s, "bert-moe-moe1-e1"))["max_inflight"] == "8"


def test_function_resources_are_patched_when_the_operator_owns_the_deployment(k8s):
    name = "bert-moe-moe1-e0"
    seed_pipeline(k8s, DAG)
    dep = openfaas_deployment(name, env={"max_inflight": "4",
                                         "CUDA_MPS_ACTIVE_THREAD_PERCENTAGE": "25"},
                              replicas=1, owner_function=True)
    k8s.put(DEPLOYMENTS, NS, name, dep)
    k8s.put(FUNCTIONS, NS, name, {"apiVersion": "openfaas.com/v1", "kind": "Function",
                                  "metadata": {"name": name, "namespace": NS},
                                  "spec": {"name": name, "image": "img:1", "environment": {
                                      "max_inflight": "4", "MODEL_PATH": "/m",
                                      "CUDA_MPS_ACTIVE_THREAD_PERCENTAGE": "25"},
                                      "requests": {"cpu": "1", "memory": "2Gi"}}})
    plan, report = run(k8s, decision_for(DAG, moe1__e0={"concurrency": 8}))
    assert report.failed == ()
    assert k8s.get(FUNCTIONS, NS, name)["spec"]["environment"] == {
        "max_inflight": "8", "MODEL_PATH": "/m", "CUDA_MPS_ACTIVE_THREAD_PERCENTAGE": "25"}
    assert k8s.get(DEPLOYMENTS, NS, name) == dep


def test_the_scaledobject_is_paused_during_a_rollout(k8s):
    seed_pipeline(k8s, DAG)
    so = {"apiVersion": "keda.sh/v1alpha1", "kind": "ScaledObject",
          "metadata": {"name": "bert-moe-moe1-e0", "namespace": NS},
          "spec": {"scaleTargetRef": {"name": "bert-moe-moe1-e0"}}}
    k8s.put(SCALEDOBJECTS, NS, "bert-moe-moe1-e0", so)
    rules = PlanRules(pause_scaledobject=True)
    plan, report = run(k8s, decision_for(DAG, moe1__e0={"concurrency": 8}), rules=rules)
    assert report.failed == ()
    annotations = k8s.get(SCALEDOBJECTS, NS, "bert-moe-moe1-e0")["metadata"]["annotations"]
    assert annotations["autoscaling.keda.sh/paused"] == "true"


def test_a_conflict_retry_goes_through_the_same_slow_knob_rules_as_the_first_attempt(k8s):
    """The controller proposes a new CPU (in place) and a new GPU share (a slow knob, held by
    hysteresis at its first tick). The API server answers the pod resize with 409; the retry
    re-plans the guarded decision, so it resizes again and never rolls the Deployment to the
    held share (the old retry re-planned the raw decision and did)."""
    from smoelib.core.decisions import ExpertDecision
    from smoelib.settings import Settings

    seed_pipeline(k8s, DAG)
    name, pod = "bert-moe-moe1-e0", "bert-moe-moe1-e0-7d9f-0"
    before = k8s.get(DEPLOYMENTS, NS, name)

    def conflict(request):  # a real server stores nothing on a 409: undo the emulator's write
        obj = k8s.handler.objects[PODS, NS, pod]
        obj.patch(obj.history[-2].raw)
        raise kmock.KubernetesError(status=409, reason="Conflict", message="the object has "
                                    "been modified")

    k8s.react("patch", PODS, pod, subresource="resize", call=conflict)
    settings = Settings()
    controller = controller_on(k8s, settings, ExpertDecision(1, 2.0, 2048, 0.5, 4))
    report = controller.step()
    assert report.status == "ok", report.error
    assert "moe1/e0: gpu_share 0.25 -> 0.5 seen 1/3 ticks; held" in report.notes
    writes = [(r.name, r.subresource) for r in k8s.k8s_requests()
              if r.method == "PATCH" and r.name in (name, pod)]
    assert writes == [(pod, "resize")] * 2  # the 409, then the re-planned resize
    after = k8s.get(DEPLOYMENTS, NS, name)
    assert after["spec"]["template"] == before["spec"]["template"]  # no rollout to share 0.5
    assert k8s.get(PODS, NS, pod)["spec"]["containers"][0]["resources"]["requests"]["cpu"] == "2"


# What kube-apiserver 1.33/1.34 answers a pods/resize that lowers a memory limit (resize
# validation, pkg/apis/core/validation): 422 with reason Invalid and the field's cause.
INVALID_MEMORY_DECREASE = {
    "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
    "message": 'Pod "bert-moe-moe1-e0-7d9f-0" is invalid: spec.containers[0].resources.limits['
               'memory]: Forbidden: memory limits cannot be decreased unless resizePolicy is '
               "RestartContainer",
    "reason": "Invalid",
    "details": {"name": "bert-moe-moe1-e0-7d9f-0", "kind": "Pod", "causes": [
        {"reason": "FieldValueForbidden", "message": "Forbidden: memory limits cannot be "
         "decreased unless resizePolicy is RestartContainer",
         "field": "spec.containers[0].resources.limits[memory]"}]},
    "code": 422}


def test_a_422_invalid_is_permanent_with_its_message_never_re_read_as_a_conflict(k8s):
    seed_pipeline(k8s, DAG)
    pod = "bert-moe-moe1-e0-7d9f-0"
    obj_before = k8s.get(PODS, NS, pod)

    def refuse(request):  # a real server stores nothing on a 422: undo the emulator's write
        k8s.handler.objects[PODS, NS, pod].patch(obj_before)
        raise kmock.KubernetesError(status=422, reason="Invalid",
                                    message=INVALID_MEMORY_DECREASE["message"],
                                    details=INVALID_MEMORY_DECREASE["details"])

    k8s.react("patch", PODS, pod, subresource="resize", call=refuse)
    plan, report = run(k8s, decision_for(DAG, moe1__e0={"memory_mb": 1024}),
                       rules=PlanRules(in_place_memory_decrease=True))  # claims 1.35
    (failed,) = report.failed
    assert failed.message.startswith(f"pod {NS}/{pod}: refused as invalid: ")
    assert "memory limits cannot be decreased unless resizePolicy is RestartContainer" in \
        failed.message
    gets = [r for r in k8s.k8s_requests() if r.method == "GET" and r.name == pod]
    assert gets == []  # no re-read: an Invalid is not a conflict


def test_before_1_35_a_memory_decrease_rolls_out_instead_of_resizing(k8s):
    seed_pipeline(k8s, DAG)
    plan, report = run(k8s, decision_for(DAG, moe1__e0={"memory_mb": 1024}))
    assert [(p.target.kind, p.subresource, p.rollout) for p in plan.patches] == [
        ("Deployment", None, True)]
    assert any("lowers a memory limit" in n for n in plan.notes)
    assert report.failed == ()
    c = container(k8s, "bert-moe-moe1-e0")
    assert c["resources"]["limits"]["memory"] == "1Gi"
    # an increase still resizes in place
    plan, _ = run(k8s, decision_for(DAG, moe1__e1={"memory_mb": 4096}))
    assert [(p.target.kind, p.subresource) for p in plan.patches] == [("Pod", "resize")]


def test_a_redeployed_function_converges_within_one_tick(k8s):
    """`faas-cli deploy` rewrites the function's env, resources and replicas; the controller's
    next tick re-applies its knobs (the decision is unchanged, so no hysteresis applies)."""
    from smoelib.core.decisions import ExpertDecision
    from smoelib.settings import Settings

    deployments = seed_pipeline(k8s, DAG)
    name = "bert-moe-moe1-e0"
    settings = Settings()
    clock = SteppedClock()
    controller = controller_on(k8s, settings, ExpertDecision(1, 1.0, 2048, 0.25, 8),
                               clock=clock)
    for _ in range(settings.guards.hysteresis_ticks):
        assert controller.step().status == "ok"
        clock.sleep(5)
    assert env(container(k8s, name))["max_inflight"] == "8"
    k8s.put(DEPLOYMENTS, NS, name, deployments[name])  # faas-cli deploy: back to its stack.yml
    assert env(container(k8s, name))["max_inflight"] == "4"
    report = controller.step()
    assert report.status == "ok" and report.patches == 1
    assert env(container(k8s, name))["max_inflight"] == "8"


def test_the_resize_is_followed_by_a_watch_not_polling(k8s):
    """The kubelet refuses the resize a moment after the API server accepted it: the backend,
    watching the function's pods, sees the condition arrive and falls back to a rollout, with
    one read of the pod and one watch, no polling."""
    import threading

    from kubernetes import client

    seed_pipeline(k8s, DAG)
    pod_name = "bert-moe-moe1-e3-7d9f-0"
    threads = []

    def kubelet_refuses():  # the kubelet's status update, through the API (so watchers see it)
        time.sleep(0.5)
        pod = k8s.get(PODS, NS, pod_name)
        conditions = pod["status"]["conditions"] + [
            {"type": "PodResizePending", "status": "True", "reason": "Infeasible",
             "message": "Node didn't have enough capacity"}]
        client.CoreV1Api(k8s.api_client).patch_namespaced_pod(
            pod_name, NS, {"status": {"conditions": conditions}}, _preload_content=False)

    def accepted(request):
        threads.append(threading.Thread(target=kubelet_refuses))
        threads[-1].start()
        return k8s.get(PODS, NS, pod_name)

    k8s.react("patch", PODS, pod_name, subresource="resize", call=accepted)
    backend = KubernetesBackend(k8s.api_client, rules=PlanRules(), timeout_s=5)
    decision = parse_decision(decision_for(DAG, moe1__e3={"cpu": 2.0}))
    fns = {n: DAG.function_name(n) for n in DAG.experts}

    def replan(only=None):
        wanted = {n: d for n, d in decision.experts.items() if only is None or fns[n] in only}
        state = backend.read_state(DAG.name, NS, sorted({fns[n] for n in wanted}))
        return plan_patches(wanted, state, functions=fns, rules=PlanRules(), now=time.time())

    started = time.monotonic()
    report = apply_plan(replan(), backend, replan=replan, conflict_retries=1, resize_watch_s=10)
    elapsed = time.monotonic() - started
    for thread in threads:
        thread.join()
    assert [(o.patch.target.kind, o.status) for o in report.outcomes] == [
        ("Pod", "applied"), ("Deployment", "applied")]
    reads = [r for r in k8s.k8s_requests() if r.method == "GET" and r.name == pod_name]
    watches = [r for r in k8s.k8s_requests() if r.params.get("watch") == "true"]
    assert len(reads) == 1 and len(watches) == 1
    assert elapsed < 5  # decided by the event, not by the 10 s limit


def controller_on(k8s, settings, proposal, *, clock=None):
    """A controller deciding ``proposal`` for moe1/e0 (every other expert at its spec) from the
    simulator's first observation (spec knobs, one pod each, as seed_pipeline writes them),
    patching kmock's functions through the kubernetes backend."""
    from types import MappingProxyType

    from smoelib.control.controller import SMoEController
    from smoelib.core.decisions import ExpertDecision, PipelineDecision
    from smoelib.sim.env import SimEnv
    from smoelib.vertical.loop import VerticalLoop

    seen = SimEnv(DAG, settings, trace="poisson", duration_s=60).reset(1)

    class Propose:
        def reset(self, seed):
            pass

        def decide(self, observation):
            experts = {n: ExpertDecision(1, s.cpu, s.memory_mb, s.gpu_share, s.concurrency)
                       for n in DAG.experts if (s := DAG.spec(n))}
            experts["moe1/e0"] = proposal
            return PipelineDecision(DAG.name, 0.0, MappingProxyType(experts))

    class Source:
        def fetch(self, now):
            return seen

    t = FakeTime()
    backend = KubernetesBackend(k8s.api_client, rules=PlanRules(), timeout_s=5, sleep=t.sleep,
                                clock=t.clock)
    return SMoEController(DAG, settings, warmup_seconds=0, source=Source(), decider=Propose(),
                          clock=clock, vertical=VerticalLoop(DAG, backend, settings))
