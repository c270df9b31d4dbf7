"""The ``kubernetes`` backend: pods (``pods/resize``), Deployments, OpenFaaS ``Function``
resources and KEDA ScaledObjects through the Kubernetes API.

Every call has a timeout. A 409, or a 422 from a failed JSON patch ``test`` (the object
changed under us), is a :class:`ConflictError`, so the plan loop re-reads and re-plans; any
other 422 (``reason: Invalid``: the API server's validation refused the change, e.g. a lower
memory limit on Kubernetes 1.33/1.34), 403 and 404 are :class:`~smoelib.errors.PermanentError`
naming the object and the server's message; timeouts and 5xx are transient.
The calls it makes are exactly what ``manifests/base/rbac.yaml`` grants.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Sequence
from typing import Any

import urllib3
from kubernetes import client

from smoelib.errors import PermanentError, TransientError
from smoelib.vertical.backends.base import ConflictError
from smoelib.vertical.backends.kubernetes_state import (
    function_state,
    owned_by_function,
    pod_state,
    scaledobjects_by_target,
)
from smoelib.vertical.records import Patch, PipelineState
from smoelib.vertical.template import SharingRules

__all__ = ["KubernetesBackend"]

_JSON_PATCH = "application/json-patch+json"
_MERGE_PATCH = "application/merge-patch+json"
_CUSTOM = {"Function": ("openfaas.com", "v1", "functions"),
           "ScaledObject": ("keda.sh", "v1alpha1", "scaledobjects")}


class KubernetesBackend:
    """Reads and patches one namespace's functions with a ``kubernetes.client.ApiClient``.

    Args:
        api_client: configured for the cluster (kubeconfig or in-cluster).
        rules: how the GPU share reaches a pod (to read knobs back).
        timeout_s: timeout of every API call, seconds.
        scaledobjects: also read ScaledObjects (to pause them during rollouts).
    """

    def __init__(self, api_client: client.ApiClient, *, rules: SharingRules, timeout_s: float,
                 scaledobjects: bool = False, sleep: Callable[[float], None] = time.sleep,
                 clock: Callable[[], float] = time.monotonic):
        self.core = client.CoreV1Api(api_client)
        self.apps = client.AppsV1Api(api_client)
        self.custom = client.CustomObjectsApi(api_client)
        self.rules = rules
        self.timeout_s = timeout_s
        self.scaledobjects = scaledobjects
        self._sleep, self._clock = sleep, clock

    # ---- reads ------------------------------------------------------------------------------
    def read_state(self, pipeline: str, namespace: str, functions: Sequence[str]
                   ) -> PipelineState:
        """Deployments, pods (one list), Function resources and ScaledObjects of ``functions``."""
        missing: dict[str, str] = {}
        pods = self._call(f"pods in {namespace}", self.core.list_namespaced_pod, namespace,
                          label_selector="faas_function")["items"]
        by_function: dict[str, list[dict]] = {}
        for pod in pods:
            label = pod.get("metadata", {}).get("labels", {}).get("faas_function")
            by_function.setdefault(label, []).append(pod)
        targets: dict[str, tuple[str, bool]] = {}
        if self.scaledobjects:
            try:
                items = self._call(f"scaledobjects in {namespace}",
                                   self.custom.list_namespaced_custom_object,
                                   "keda.sh", "v1alpha1", namespace, "scaledobjects")["items"]
                targets = scaledobjects_by_target(items)
            except PermanentError as e:
                missing["(scaledobjects)"] = str(e)
        states = {}
        for name in functions:
            try:
                deployment = self._call(f"deployment {namespace}/{name}",
                                        self.apps.read_namespaced_deployment, name, namespace)
                cr = None
                if owned_by_function(deployment):
                    cr = self._call(f"function {namespace}/{name}",
                                    self.custom.get_namespaced_custom_object,
                                    "openfaas.com", "v1", namespace, "functions", name)
                states[name] = function_state(name, deployment, by_function.get(name, ()),
                                              rules=self.rules, function_cr=cr,
                                              scaledobject=targets.get(name))
            except (PermanentError, ValueError) as e:
                missing[name] = str(e)
        return PipelineState(pipeline=pipeline, namespace=namespace, functions=states,
                             missing=missing)

    def stuck_resizes(self, pods: Sequence[Patch], timeout_s: float) -> set[str]:
        """Follow the resized pods until each reports a failed resize (``PodResizePending``
        Infeasible or Deferred, ``PodResizeInProgress`` Error) or has it actuated
        (``containerStatuses[].resources`` equals the spec), or ``timeout_s`` passes: one read
        of each, then a watch of their functions' pods (no polling)."""
        waiting = {(p.target.namespace, p.target.name): p.function for p in pods}
        stuck: set[str] = set()

        def settle(key: tuple[str, str], pod: dict[str, Any]) -> None:
            state = pod_state(pod, waiting[key])
            if state is None or state.resize_pending or _actuated(pod, state):
                if state is not None and state.resize_pending:
                    stuck.add(waiting[key])
                del waiting[key]

        for key in list(waiting):
            try:
                settle(key, self._call(f"pod {key[0]}/{key[1]}", self.core.read_namespaced_pod,
                                       key[1], key[0]))
            except PermanentError:
                del waiting[key]
        deadline = self._clock() + timeout_s
        for namespace in sorted({ns for ns, _ in waiting}):
            functions = sorted({f for (ns, _), f in waiting.items() if ns == namespace})
            self._watch(namespace, functions, waiting, settle, deadline)
        return stuck

    def _watch(self, namespace: str, functions: list[str], waiting: dict, settle: Any,
               deadline: float) -> None:
        """Watch the functions' pods (the API's watch, read as raw JSON lines: no model
        deserialisation, which real pods pass but older clients cannot skip) until nothing in
        ``namespace`` is waiting or ``deadline`` passes."""
        remaining = deadline - self._clock()
        if remaining <= 0:
            return
        try:
            rsp = self.core.list_namespaced_pod(
                namespace, watch=True, label_selector=f"faas_function in ({','.join(functions)})",
                timeout_seconds=max(1, math.ceil(remaining)), _preload_content=False,
                _request_timeout=remaining)
        except (client.ApiException, urllib3.exceptions.HTTPError, OSError):
            return  # no watch: the resize stays undecided, as after a timeout
        buffer = b""
        try:
            for chunk in rsp.stream(amt=None, decode_content=True):
                buffer += chunk
                *lines, buffer = buffer.split(b"\n")
                for line in lines:
                    event = json.loads(line) if line.strip() else {}
                    pod = event.get("object") or {}
                    key = (namespace, (pod.get("metadata") or {}).get("name"))
                    if event.get("type") in ("ADDED", "MODIFIED") and key in waiting:
                        settle(key, pod)
                if not any(ns == namespace for ns, _ in waiting) or self._clock() >= deadline:
                    break
        except (urllib3.exceptions.HTTPError, OSError, ValueError):
            pass  # the watch ended (its timeout, or the server closed it): still waiting
        finally:
            rsp.release_conn()

    # ---- writes -----------------------------------------------------------------------------
    def apply(self, patch: Patch) -> None:
        t = patch.target
        if t.kind == "Pod" and patch.subresource == "resize":
            call, args = self.core.patch_namespaced_pod_resize, (t.name, t.namespace)
        elif t.kind == "Deployment" and patch.subresource is None:
            call, args = self.apps.patch_namespaced_deployment, (t.name, t.namespace)
        elif t.kind in _CUSTOM and patch.subresource is None:
            group, version, plural = _CUSTOM[t.kind]
            call = self.custom.patch_namespaced_custom_object
            args = (group, version, t.namespace, plural, t.name)
        else:
            raise PermanentError(f"{t}: the kubernetes backend does not patch "
                                 f"{t.kind}{'/' + patch.subresource if patch.subresource else ''}")
        content_type = _JSON_PATCH if patch.patch_type == "json" else _MERGE_PATCH
        self._call(str(t), call, *args, body=patch.body, _content_type=content_type)

    def _call(self, what: str, fn: Any, *args: Any, **kwargs: Any) -> dict[str, Any]:
        try:
            response = fn(*args, _request_timeout=self.timeout_s, _preload_content=False,
                          **kwargs)
            return json.loads(response.data or b"{}")
        except client.ApiException as e:
            message = _message(e)
            if e.status == 409 or (e.status == 422 and _failed_test(e)):
                raise ConflictError(f"{what}: {e.status} {message}") from e
            if e.status == 422:
                raise PermanentError(f"{what}: refused as invalid: {message}") from e
            if e.status in (401, 403):
                raise PermanentError(f"{what}: forbidden: {message}") from e
            if e.status == 404:
                raise PermanentError(f"{what}: not found") from e
            if e.status is not None and 400 <= e.status < 500:
                raise PermanentError(f"{what}: {e.status} {message}") from e
            raise TransientError(f"{what}: {e.status} {message}") from e
        except (urllib3.exceptions.HTTPError, OSError) as e:
            raise TransientError(f"{what}: {e}") from e


def _message(e: Any) -> str:
    try:
        return str(json.loads(e.body).get("message", "")) or str(e.reason)
    except (TypeError, ValueError, AttributeError):
        return str(e.reason)


def _failed_test(e: Any) -> bool:
    """Whether a 422 is a JSON patch ``test`` op that failed (the object changed since it was
    read), not a validation error: the API server answers it with a generic Status whose
    cause names the failed test."""
    try:
        body = json.loads(e.body)
    except (TypeError, ValueError):
        return False
    causes = (body.get("details") or {}).get("causes") or ()
    texts = [str(body.get("message", ""))] + [str(c.get("message", "")) for c in causes]
    return any("test" in t and "fail" in t for t in texts) and not any(
        c.get("field") for c in causes)


def _actuated(pod: dict[str, Any], state: Any) -> bool:
    statuses = (pod.get("status") or {}).get("containerStatuses") or ()
    name = state.container.get("name")
    actual = next((s.get("resources") for s in statuses if s.get("name") == name), None)
    return actual is not None and actual == state.container.get("resources")
