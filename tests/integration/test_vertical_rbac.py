"""Every API call the kubernetes backend makes is allowed by the Role in manifests/base."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import yaml

from smoelib.core.decisions import parse_decision
from smoelib.topology import build_dag
from smoelib.vertical import PlanRules, plan_patches
from smoelib.vertical.backends.base import apply_plan
from smoelib.vertical.backends.kubernetes import KubernetesBackend
from tests.integration import k8s_fixtures
from tests.integration.k8s_fixtures import (
    DEPLOYMENTS,
    FUNCTIONS,
    SCALEDOBJECTS,
    decision_for,
    openfaas_deployment,
    seed_pipeline,
)

pytestmark = pytest.mark.integration
k8s = k8s_fixtures.k8s  # the emulator fixture
ROOT = Path(__file__).resolve().parents[2]
RBAC = ROOT / "manifests" / "base" / "rbac.yaml"
DAG = build_dag(ROOT / "examples" / "pipelines" / "bert-moe.yml", validate=True,
                attach_metadata=True)


def role_rules():
    docs = list(yaml.safe_load_all(RBAC.read_text()))
    for doc in docs:
        assert doc["metadata"].get("namespace"), f"{doc['kind']} names no namespace"
    (role,) = [d for d in docs if d["kind"] == "Role"]
    assert role["metadata"]["namespace"] == DAG.namespace
    (binding,) = [d for d in docs if d["kind"] == "RoleBinding"]
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "smoe",
                                    "namespace": "smoe-system"}]
    return role["rules"]


def verb(request) -> str:
    if request.method == "GET":
        if request.params.get("watch") == "true":
            return "watch"
        return "get" if request.name else "list"
    return {"PATCH": "patch", "PUT": "update", "POST": "create", "DELETE": "delete"}[
        request.method]


def allowed(rules, v, group, resource) -> bool:
    return any(group in r["apiGroups"] and resource in r["resources"] and v in r["verbs"]
               for r in rules)


def test_the_role_is_least_privilege():
    rules = role_rules()
    flat = [(g, r, v) for rule in rules for g in rule["apiGroups"] for r in rule["resources"]
            for v in rule["verbs"]]
    assert all("*" not in t for t in flat)
    assert ("", "pods/resize", "patch") in flat
    assert not any(r in ("secrets", "deployments/scale", "pods/exec") for _, r, _ in flat)


def test_every_call_the_backend_makes_is_allowed(k8s):
    seed_pipeline(k8s, DAG)
    owned = "bert-moe-moe2-e0"
    k8s.put(DEPLOYMENTS, DAG.namespace, owned, openfaas_deployment(
        owned, env={"max_inflight": "4", "CUDA_MPS_ACTIVE_THREAD_PERCENTAGE": "25"},
        replicas=1, owner_function=True))
    k8s.put(FUNCTIONS, DAG.namespace, owned, {"metadata": {"name": owned}, "spec": {
        "name": owned, "image": "i", "environment": {"max_inflight": "4"}}})
    k8s.put(SCALEDOBJECTS, DAG.namespace, "so-moe1-e0", {
        "metadata": {"name": "so-moe1-e0"}, "spec": {"scaleTargetRef": {"name":
                                                                        "bert-moe-moe1-e0"}}})
    rules = PlanRules(pause_scaledobject=True)
    backend = KubernetesBackend(k8s.api_client, rules=rules, timeout_s=5, scaledobjects=True,
                                sleep=lambda s: None, clock=time.monotonic)
    decision = parse_decision(decision_for(DAG, moe1__e0={"concurrency": 8},
                                           moe1__e1={"cpu": 2.0},
                                           moe2__e0={"concurrency": 8}))
    fns = {n: DAG.function_name(n) for n in DAG.experts}

    def replan(only=None):
        names = sorted(f for f in fns.values() if only is None or f in only)
        return plan_patches({n: d for n, d in decision.experts.items() if fns[n] in names},
                            backend.read_state(DAG.name, DAG.namespace, names), functions=fns,
                            rules=rules, now=time.time())

    report = apply_plan(replan(), backend, replan=replan, conflict_retries=1, resize_watch_s=1)
    assert report.failed == ()
    calls = {(verb(r), r.resource.group, r.resource.plural + (f"/{r.subresource}"
                                                                if r.subresource else ""))
             for r in k8s.k8s_requests()}
    assert {c[0] for c in calls} >= {"get", "list", "patch"}
    assert ("patch", "", "pods/resize") in calls and ("patch", "openfaas.com", "functions") in calls
    assert ("patch", "keda.sh", "scaledobjects") in calls
    rules_ = role_rules()
    denied = sorted(c for c in calls if not allowed(rules_, *c))
    assert denied == []
    granted = {(v, g, r) for rule in rules_ for g in rule["apiGroups"] for r in rule["resources"]
               for v in rule["verbs"]}
    assert sorted(granted - calls) == []  # nothing granted that the code never calls
    assert all(r.namespace == DAG.namespace for r in k8s.k8s_requests())
