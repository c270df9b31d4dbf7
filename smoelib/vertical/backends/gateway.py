"""The ``openfaas-gateway`` backend: ``PUT /system/functions`` with each function's full spec.

The spec comes from the user's ``stack.yml`` (:func:`~smoelib.vertical.backends.stack.load_stack`);
without one the backend refuses, because a PUT replaces the whole spec and a GET does not return
env vars. What sMoE last set is recorded in the ``smoe.io/managed-env`` annotation, which GET does
return, so the live env is ``stack.yml``'s overlaid with it. Only 202 is success: faas-netes
answers 200 with an empty body when an update fails. Basic auth comes from the gateway's
``basic-auth`` Secret mounted as files. Every request has a timeout.
"""

from __future__ import annotations

import base64
import json
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from smoelib.errors import ConfigError, PermanentError, Problem, TransientError
from smoelib.vertical.planner_writers import MANAGED_ENV_ANNOTATION
from smoelib.vertical.records import FunctionState, Patch, PipelineState
from smoelib.vertical.template import SharingRules, read_knobs

__all__ = ["GatewayBackend", "read_basic_auth"]


def read_basic_auth(directory: str | Path) -> tuple[str, str]:
    """(user, password) from a mounted ``basic-auth`` Secret (``basic-auth-user``,
    ``basic-auth-password``)."""
    root = Path(directory)
    try:
        user = (root / "basic-auth-user").read_text().strip()
        password = (root / "basic-auth-password").read_text().strip()
    except OSError as e:
        raise ConfigError([Problem("vertical.gateway_auth_dir", f"cannot read the gateway's "
                                   f"basic-auth files in {root}: {e.strerror}")]) from e
    return user, password


class GatewayBackend:
    """Args: ``url`` the gateway base URL; ``stack`` function -> full ``FunctionDeployment``;
    ``rules`` how the GPU share reaches a pod; ``timeout_s`` per request (seconds);
    ``auth`` (user, password) or None."""

    def __init__(self, url: str, *, stack: Mapping[str, Mapping[str, Any]], rules: SharingRules,
                 timeout_s: float, auth: tuple[str, str] | None = None):
        self.url = url.rstrip("/")
        self.stack = stack
        self.rules = rules
        self.timeout_s = timeout_s
        self._auth = None
        if auth is not None:
            self._auth = "Basic " + base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode()

    def read_state(self, pipeline: str, namespace: str, functions: Sequence[str]
                   ) -> PipelineState:
        states, missing = {}, {}
        for name in functions:
            if name not in self.stack:
                missing[name] = "not in stack.yml: without its full spec a PUT would wipe it"
                continue
            query = urllib.parse.urlencode({"namespace": namespace})
            try:
                status, body = self._request("GET", f"/system/function/{urllib.parse.quote(name)}"
                                             f"?{query}", None, what=f"function {name}")
                if status != 200:
                    raise PermanentError(f"function {namespace}/{name}: GET answered {status}")
                states[name] = self._state(name, namespace, json.loads(body or b"{}"))
            except (PermanentError, ValueError) as e:
                missing[name] = str(e)
        return PipelineState(pipeline=pipeline, namespace=namespace, functions=states,
                             missing=missing)

    def _state(self, name: str, namespace: str, status: Mapping[str, Any]) -> FunctionState:
        spec = dict(self.stack[name])
        annotations = status.get("annotations") or {}
        managed = json.loads(annotations.get(MANAGED_ENV_ANNOTATION, "{}"))
        env = {**dict(spec.get("envVars") or {}), **{str(k): str(v) for k, v in managed.items()}}
        spec["envVars"] = env
        for side in ("requests", "limits"):
            if status.get(side):
                spec[side] = {k: v for k, v in status[side].items() if k in ("cpu", "memory")}
        container = {"env": [{"name": k, "value": v} for k, v in env.items()],
                     "resources": {s: spec[s] for s in ("requests", "limits") if spec.get(s)}}
        labels = {**dict(spec.get("labels") or {}), **dict(status.get("labels") or {})}
        return FunctionState(function=name, namespace=namespace, writer="gateway", labels=labels,
                             knobs=read_knobs(container, {}, self.rules), env=env, spec=spec,
                             replicas=int(status.get("replicas") or 0),
                             ready_replicas=int(status.get("availableReplicas") or 0))

    def apply(self, patch: Patch) -> None:
        if patch.patch_type != "put" or patch.target.api != "gateway":
            raise PermanentError(f"{patch.target}: the openfaas-gateway backend only PUTs "
                                 "function specs")
        if patch.function not in self.stack:
            raise PermanentError(f"{patch.target}: not in stack.yml; refusing to PUT a partial "
                                 "spec")
        status, body = self._request("PUT", "/system/functions", patch.body,
                                     what=str(patch.target))
        if status == 202:
            return
        if status == 200:
            raise PermanentError(f"{patch.target}: the gateway answered 200 with "
                                 f"{'an empty body' if not body else repr(body[:200])}: "
                                 "faas-netes failed the update (its log has the cause)")
        raise PermanentError(f"{patch.target}: the gateway answered {status}")

    def stuck_resizes(self, pods: Sequence[Patch], timeout_s: float) -> set[str]:
        return set()  # the gateway never resizes in place

    def _request(self, method: str, path: str, body: Any, *, what: str) -> tuple[int, bytes]:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(self.url + path, data=data, method=method)
        if data is not None:
            request.add_header("Content-Type", "application/json")
        if self._auth:
            request.add_header("Authorization", self._auth)
        try:
            with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
                return response.status, response.read()
        except urllib.error.HTTPError as e:
            text = e.read().decode(errors="replace").strip()[:200]
            if e.code in (401, 403):
                raise PermanentError(f"{what}: the gateway refused the credentials "
                                     f"({e.code})") from e
            if e.code == 404:
                raise PermanentError(f"{what}: not found") from e
            if e.code < 500:
                raise PermanentError(f"{what}: {e.code} {text}") from e
            raise TransientError(f"{what}: {e.code} {text}") from e
        except (urllib.error.URLError, OSError) as e:
            raise TransientError(f"{what}: {e}") from e
