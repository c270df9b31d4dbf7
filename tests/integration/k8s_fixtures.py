"""kmock's Kubernetes API emulator in a background thread, for the sync ``kubernetes`` client.

The emulator keeps objects in memory and merges patch bodies naively (JSON patches it applies
exactly); it emulates neither server-side apply, nor conflicts, nor RBAC, so tests script 409,
403 and 404 with reactions (:meth:`K8sCluster.react`). Every request it served is in
:attr:`K8sCluster.requests`, for the RBAC test.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Iterator
from typing import Any

import kmock
import pytest
from kubernetes import client

__all__ = ["K8sCluster", "k8s", "DEPLOYMENTS", "PODS", "FUNCTIONS", "SCALEDOBJECTS"]

DEPLOYMENTS = "apps/v1/deployments"
PODS = "v1/pods"
FUNCTIONS = "openfaas.com/v1/functions"
SCALEDOBJECTS = "keda.sh/v1alpha1/scaledobjects"


class K8sCluster:
    """A running emulator: its URL, its objects, its request log, and a client pointed at it."""

    def __init__(self, handler: kmock.KubernetesEmulator, url: str,
                 loop: asyncio.AbstractEventLoop):
        self.handler = handler
        self.url = url
        self.loop = loop
        config = client.Configuration(host=url)
        self.api_client = client.ApiClient(config)

    def put(self, resource: str, namespace: str, name: str, obj: dict[str, Any]) -> None:
        """Store an object as if it had been created."""
        self.handler.objects[resource, namespace, name] = obj

    def get(self, resource: str, namespace: str, name: str) -> dict[str, Any]:
        """An object's current state (a plain dict)."""
        return dict(self.handler.objects[resource, namespace, name].raw)

    def history(self, resource: str, namespace: str, name: str) -> list[Any]:
        return list(self.handler.objects[resource, namespace, name].history)

    def react(self, method: str, resource: str, name: str, *, subresource: str | None = None,
              status: int | None = None, payload: Any = None, times: int = 1,
              call: Callable[[Any], Any] | None = None) -> None:
        """Answer the next ``times`` matching requests with ``status`` (a Kubernetes Status)
        or with ``call(request)``'s payload. The emulator has already stored a write by then."""
        criteria: list[Any] = [method.lower(), kmock.resource(resource), kmock.name(name)]
        if subresource is not None:
            criteria.append(kmock.subresource(subresource))
        view = self.handler[tuple(criteria)][:times] if times else self.handler[tuple(criteria)]
        if call is not None:
            view << call
        else:
            view << kmock.KubernetesError(status=status, reason=_REASONS.get(status),
                                          message=f"scripted {status}")

    @property
    def requests(self) -> list[Any]:
        """Every request served so far (``kmock.Request``: method, resource, subresource...)."""
        return list(self.handler)

    def k8s_requests(self) -> list[Any]:
        return [r for r in self.requests if r.resource is not None]


_REASONS = {403: "Forbidden", 404: "NotFound", 409: "Conflict", 422: "Invalid"}


@pytest.fixture()
def k8s() -> Iterator[K8sCluster]:
    """The emulator on 127.0.0.1 with a free port, served from a background thread."""
    ready = threading.Event()
    stop: dict[str, Any] = {}
    box: dict[str, Any] = {}

    async def serve() -> None:
        handler = kmock.KubernetesEmulator()
        for resource in (DEPLOYMENTS, PODS, FUNCTIONS, SCALEDOBJECTS):
            handler.resources[resource] = {}
        async with handler, kmock.Server(handler, host="127.0.0.1") as server:
            stop["event"] = asyncio.Event()
            box["cluster"] = K8sCluster(handler, str(server.url).rstrip("/"),
                                        asyncio.get_running_loop())
            ready.set()
            await stop["event"].wait()

    def run() -> None:
        try:
            asyncio.run(serve())
        except BaseException as e:  # surface startup failures in the test thread
            box["error"] = e
            ready.set()

    thread = threading.Thread(target=run, name="kmock", daemon=True)
    thread.start()
    assert ready.wait(10), "kmock did not start"
    if "error" in box:
        raise box["error"]
    cluster: K8sCluster = box["cluster"]
    try:
        yield cluster
    finally:
        cluster.api_client.close()
        cluster.loop.call_soon_threadsafe(stop["event"].set)
        thread.join(10)


# ---- objects as OpenFaaS (faas-netes) creates them --------------------------------------------
def openfaas_deployment(name: str, *, namespace: str = "openfaas-fn", replicas: int = 2,
                        env: dict[str, str] | None = None, cpu: str = "1", memory: str = "2Gi",
                        limits: dict[str, str] | None = None, image: str | None = None,
                        owner_function: bool = False) -> dict[str, Any]:
    """A function's Deployment: label ``faas_function``, one container named after the function
    with its own env (``fprocess`` first, sorted), ``maxUnavailable: 0, maxSurge: 1``."""
    env = {"fprocess": "python index.py", **(env or {})}
    container = {
        "name": name, "image": image or f"ghcr.io/example/{name}:0.1",
        "ports": [{"name": "http", "containerPort": 8080, "protocol": "TCP"}],
        "env": [{"name": k, "value": v} for k, v in env.items()],
        "resources": {"requests": {"cpu": cpu, "memory": memory},
                      "limits": limits if limits is not None else {"cpu": cpu, "memory": memory}},
        "imagePullPolicy": "Always",
        "livenessProbe": {"httpGet": {"path": "/_/health", "port": 8080}},
        "readinessProbe": {"httpGet": {"path": "/_/health", "port": 8080}},
    }
    meta: dict[str, Any] = {"name": name, "namespace": namespace, "generation": 1,
                            "resourceVersion": "100", "labels": {"faas_function": name},
                            "annotations": {"prometheus.io.scrape": "false"}}
    if owner_function:
        meta["ownerReferences"] = [{"apiVersion": "openfaas.com/v1", "kind": "Function",
                                    "name": name, "controller": True, "uid": "u-" + name}]
    return {
        "apiVersion": "apps/v1", "kind": "Deployment", "metadata": meta,
        "spec": {"replicas": replicas, "selector": {"matchLabels": {"faas_function": name}},
                 "strategy": {"type": "RollingUpdate",
                              "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1}},
                 "revisionHistoryLimit": 10,
                 "template": {"metadata": {"labels": {"faas_function": name},
                                           "annotations": {"prometheus.io.scrape": "false"}},
                              "spec": {"containers": [container]}}},
        "status": {"observedGeneration": 1, "replicas": replicas, "updatedReplicas": replicas,
                   "readyReplicas": replicas, "availableReplicas": replicas},
    }


def openfaas_pod(deployment: dict[str, Any], index: int, *, phase: str = "Running",
                 resize_pending: str | None = None) -> dict[str, Any]:
    """Pod ``index`` of a function Deployment, running and ready."""
    name = deployment["metadata"]["name"]
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    conditions = [{"type": "Ready", "status": "True"}]
    if resize_pending:
        conditions.append({"type": "PodResizePending", "status": "True",
                           "reason": resize_pending,
                           "lastTransitionTime": "2020-01-01T00:00:00Z"})
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": f"{name}-7d9f-{index}", "namespace":
                         deployment["metadata"]["namespace"],
                         "labels": {"faas_function": name, "pod-template-hash": "7d9f"}},
            "spec": {"containers": [dict(container)]},
            "status": {"phase": phase, "conditions": conditions,
                       "containerStatuses": [{"name": name, "ready": True,
                                              "resources": container["resources"]}]}}


def seed_pipeline(cluster: K8sCluster, dag: Any, *, pods_per_function: int = 1,
                  extra: tuple[str, ...] = ("nodeinfo",)) -> dict[str, dict[str, Any]]:
    """Every function of ``dag`` (experts and segments) as OpenFaaS creates it, from each node's
    spec (``max_inflight`` and the MPS thread percentage in its env), plus unrelated functions
    ``extra``. Returns function name -> Deployment."""
    out: dict[str, dict[str, Any]] = {}
    names = [(dag.function_name(n), dag.spec(n)) for n in dag.nodes if dag.function_name(n)]
    for name, spec in names + [(e, None) for e in extra]:
        env = {"MODEL_PATH": f"/models/{name}"}
        if spec is not None:
            env.update({"max_inflight": str(spec.concurrency),
                        "CUDA_MPS_ACTIVE_THREAD_PERCENTAGE": str(round(spec.gpu_share * 100))})
        cpu = f"{round((spec.cpu if spec else 0.1) * 1000)}m"
        memory = f"{spec.memory_mb if spec else 128}Mi"
        dep = openfaas_deployment(name, namespace=dag.namespace, env=env, cpu=cpu,
                                  memory=memory, replicas=pods_per_function)
        cluster.put(DEPLOYMENTS, dag.namespace, name, dep)
        for i in range(pods_per_function):
            pod = openfaas_pod(dep, i)
            cluster.put(PODS, dag.namespace, pod["metadata"]["name"], pod)
        out[name] = dep
    return out


def decision_for(dag: Any, **overrides: dict[str, Any]) -> dict[str, Any]:
    """A decision file (JSON data) keeping every expert at its spec, except ``overrides``
    (node id with ``/`` written as ``__`` -> knobs)."""
    experts = {}
    for node in dag.experts:
        s = dag.spec(node)
        knobs = {"replicas": 1, "cpu": s.cpu, "memory_mb": s.memory_mb,
                 "gpu_share": s.gpu_share, "concurrency": s.concurrency}
        knobs.update(overrides.get(node.replace("/", "__"), {}))
        experts[node] = knobs
    return {"pipeline": dag.name, "updated_at": 1_900_000_000, "experts": experts}
