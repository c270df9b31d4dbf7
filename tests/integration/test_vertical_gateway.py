"""The openfaas-gateway backend against a local gateway that checks every request against the
OpenFaaS OpenAPI spec and answers as faas-netes does (GET without env vars, 202 on update,
200 with an empty body when an update fails, basic auth on /system/*)."""

from __future__ import annotations

import base64
import json
import re
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import jsonschema
import pytest
import yaml

from smoelib.core.decisions import parse_decision
from smoelib.errors import ConfigError
from smoelib.topology import build_dag
from smoelib.vertical import PlanRules, plan_patches
from smoelib.vertical.backends.base import apply_plan
from smoelib.vertical.backends.gateway import GatewayBackend
from smoelib.vertical.backends.stack import load_stack
from tests.integration.k8s_fixtures import decision_for

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]
SPEC = yaml.safe_load((ROOT / "tests" / "schemas" / "openfaas-gateway.openapi.yml").read_text())
DAG = build_dag(ROOT / "examples" / "pipelines" / "bert-moe.yml", validate=True,
                attach_metadata=True)
AUTH = ("admin", "s3cret")


def to_json_schema(node: Any, components: dict[str, Any]) -> Any:
    """OpenAPI 3.0 schema -> JSON Schema: ``$ref`` inlined, ``nullable`` as a null branch."""
    if isinstance(node, list):
        return [to_json_schema(n, components) for n in node]
    if not isinstance(node, dict):
        return node
    if "$ref" in node:
        return to_json_schema(components[node["$ref"].rsplit("/", 1)[1]], components)
    out = {k: to_json_schema(v, components) for k, v in node.items()
           if k not in ("nullable", "example", "deprecated", "format")}
    if node.get("nullable"):
        return {"anyOf": [out, {"type": "null"}]}
    return out


class FakeGateway:
    """Functions by name (full ``FunctionDeployment`` each); ``fail_updates`` names functions
    whose update faas-netes fails (e.g. its image check)."""

    def __init__(self, spec: dict[str, Any]):
        self.spec = spec
        self.components = spec["components"]["schemas"]
        self.functions: dict[str, dict[str, Any]] = {}
        self.fail_updates: set[str] = set()
        self.requests: list[tuple[str, str, Any]] = []
        self.violations: list[str] = []

    def operation(self, method: str, path: str) -> dict[str, Any] | None:
        for template, ops in self.spec["paths"].items():
            pattern = "^" + re.sub(r"\{[^}]+\}", "[^/]+", template) + "$"
            if re.match(pattern, path) and method.lower() in ops:
                return ops[method.lower()]
        return None

    def check(self, name: str, schema: dict[str, Any], value: Any) -> None:
        try:
            jsonschema.validate(value, to_json_schema(schema, self.components))
        except jsonschema.ValidationError as e:
            self.violations.append(f"{name}: {e.message}")

    def handle(self, method: str, raw_path: str, headers: Any, body: bytes) -> tuple[int, Any]:
        url = urlsplit(raw_path)
        data = json.loads(body) if body else None
        self.requests.append((method, url.path, data))
        op = self.operation(method, url.path)
        if op is None:
            self.violations.append(f"{method} {url.path}: not in the spec")
            return 404, None
        for param in op.get("parameters", ()):
            if param["in"] == "query" and param["name"] in parse_qs(url.query):
                self.check(param["name"], param["schema"], parse_qs(url.query)[param["name"]][0])
        if "requestBody" in op:
            content = op["requestBody"]["content"]
            if headers.get("Content-Type") not in content:
                self.violations.append(f"{method} {url.path}: content type "
                                       f"{headers.get('Content-Type')}")
            self.check(f"{method} {url.path} body",
                       next(iter(content.values()))["schema"], data)
        expected = "Basic " + base64.b64encode(":".join(AUTH).encode()).decode()
        if url.path.startswith("/system/") and headers.get("Authorization") != expected:
            return 401, None
        if method == "GET" and url.path.startswith("/system/function/"):
            fn = self.functions.get(url.path.rsplit("/", 1)[1])
            if fn is None:
                return 404, None
            status = {"name": fn["service"], "image": fn["image"],
                      "namespace": fn.get("namespace", "openfaas-fn"), "replicas": 2,
                      "availableReplicas": 2, "envProcess": fn.get("envProcess", ""),
                      "labels": {**(fn.get("labels") or {}), "faas_function": fn["service"]},
                      "annotations": fn.get("annotations") or {},
                      "requests": fn.get("requests"), "limits": fn.get("limits")}
            self.check("FunctionStatus", op["responses"]["200"]["content"]["*/*"]["schema"],
                       status)
            return 200, status  # no envVars: faas-netes does not return them
        if method == "PUT" and url.path == "/system/functions":
            if data["service"] not in self.functions:
                return 404, None
            if data["service"] in self.fail_updates:
                return 200, None  # faas-netes logs the error and writes no status
            self.functions[data["service"]] = data
            return 202, None
        return 500, None


@pytest.fixture()
def gateway():
    fake = FakeGateway(SPEC)

    class Handler(BaseHTTPRequestHandler):
        def _serve(self):
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            status, payload = fake.handle(self.command, self.path, self.headers, body)
            data = b"" if payload is None else json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        do_GET = do_PUT = do_POST = _serve

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    fake.url = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        yield fake
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)
    assert fake.violations == []


def write_stack(tmp_path: Path) -> tuple[Path, dict[str, dict[str, Any]]]:
    functions = {}
    for node in DAG.experts:
        s = DAG.spec(node)
        functions[s.function] = {
            "lang": "python3-http", "handler": "./expert", "image": f"ghcr.io/x/{s.function}:1",
            "environment": {"max_inflight": s.concurrency, "MODEL_PATH": "/models/expert",
                            "CUDA_MPS_ACTIVE_THREAD_PERCENTAGE": round(s.gpu_share * 100)},
            "environment_file": ["common.yml"],
            "labels": {"com.openfaas.scale.zero": "false"},
            "requests": {"cpu": "1", "memory": "2Gi"}, "limits": {"memory": "4Gi"}}
    (tmp_path / "common.yml").write_text("environment:\n  write_timeout: 30s\n")
    path = tmp_path / "stack.yml"
    path.write_text(yaml.safe_dump({"version": 1.0, "provider": {"name": "openfaas"},
                                    "functions": functions}))
    stack = load_stack(path, sorted(functions), namespace=DAG.namespace)
    return path, stack


def run(gateway, stack, data):
    rules = PlanRules()
    backend = GatewayBackend(gateway.url, stack=stack, rules=rules, timeout_s=5, auth=AUTH)
    decision = parse_decision(data)
    fns = {n: DAG.function_name(n) for n in DAG.experts}

    def replan(only=None):
        names = sorted(f for f in fns.values() if only is None or f in only)
        return plan_patches({n: d for n, d in decision.experts.items() if fns[n] in names},
                            backend.read_state(DAG.name, DAG.namespace, names), functions=fns,
                            rules=rules, now=time.time())

    plan = replan()
    return plan, apply_plan(plan, backend, replan=replan, conflict_retries=1, resize_watch_s=0)


def test_put_carries_the_whole_spec_and_a_rerun_plans_nothing(gateway, tmp_path):
    _, stack = write_stack(tmp_path)
    gateway.functions = {k: dict(v) for k, v in stack.items()}
    data = decision_for(DAG, moe1__e0={"concurrency": 8, "cpu": 2.0})
    plan, report = run(gateway, stack, data)
    assert [p.target.name for p in plan.patches] == ["bert-moe-moe1-e0"] and not report.failed
    (put,) = [r for r in gateway.requests if r[0] == "PUT"]
    body = put[2]
    assert body["image"] == "ghcr.io/x/bert-moe-moe1-e0:1"
    assert body["envVars"] == {"write_timeout": "30s", "max_inflight": "8",
                               "MODEL_PATH": "/models/expert",
                               "CUDA_MPS_ACTIVE_THREAD_PERCENTAGE": "25"}
    assert body["requests"] == {"cpu": "2", "memory": "2Gi"} and body["limits"] == {
        "memory": "4Gi"}
    assert body["labels"] == {"com.openfaas.scale.zero": "false"}
    plan2, _ = run(gateway, stack, data)
    assert plan2.patches == ()


def test_only_202_counts_an_empty_200_is_a_failure_named_by_function(gateway, tmp_path):
    _, stack = write_stack(tmp_path)
    gateway.functions = {k: dict(v) for k, v in stack.items()}
    gateway.fail_updates = {"bert-moe-moe1-e0"}
    plan, report = run(gateway, stack, decision_for(DAG, moe1__e0={"concurrency": 8},
                                                     moe1__e1={"concurrency": 8}))
    (failed,) = report.failed
    assert failed.patch.function == "bert-moe-moe1-e0" and "200 with an empty body" in \
        failed.message
    assert gateway.functions["bert-moe-moe1-e1"]["envVars"]["max_inflight"] == "8"


def test_wrong_credentials_and_missing_functions_are_reported(gateway, tmp_path):
    _, stack = write_stack(tmp_path)
    gateway.functions = {k: dict(v) for k, v in stack.items() if not k.endswith("moe1-e1")}
    backend = GatewayBackend(gateway.url, stack=stack, rules=PlanRules(), timeout_s=5,
                             auth=("admin", "wrong"))
    state = backend.read_state(DAG.name, DAG.namespace, ["bert-moe-moe1-e0"])
    assert "refused the credentials (401)" in state.missing["bert-moe-moe1-e0"]
    _, report = run(gateway, stack, decision_for(DAG, moe1__e1={"concurrency": 8}))
    assert "not found" in " ".join(report.notes)


def test_without_a_full_spec_the_backend_refuses(tmp_path):
    path, _ = write_stack(tmp_path)
    with pytest.raises(ConfigError, match="functions.nodeinfo: missing"):
        load_stack(path, ["bert-moe-moe1-e0", "nodeinfo"], namespace="openfaas-fn")
