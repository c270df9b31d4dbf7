"""A plan as YAML, for dry runs and ``smoe plan``: what changes, on which object, and why. Pure.

A patch body can carry the function's whole container or spec (a JSON patch replaces the
container entry whole; the gateway PUTs the whole spec), so printed bodies show the values of
sMoE's own environment variables only: every other env value (a token, a password) is printed
as ``<redacted>``, and what the patch changes is listed under ``changes``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import yaml

from smoelib.vertical.planner import Plan
from smoelib.vertical.records import Patch
from smoelib.vertical.template import MAX_INFLIGHT, PINNED_MEM, THREAD_PCT

__all__ = ["plan_to_yaml", "patch_to_dict"]


def patch_to_dict(patch: Patch, *, with_body: bool = True) -> dict[str, Any]:
    """One patch as plain data (``changes`` as ``{what: {from, to}}``)."""
    t = patch.target
    out: dict[str, Any] = {
        "target": {"api": t.api, "kind": t.kind, "namespace": t.namespace, "name": t.name},
        "subresource": patch.subresource,
        "node": patch.node,
        "why": patch.reason,
        "rollout": patch.rollout,
        "pods_replaced": patch.pods_replaced,
        "changes": {k: {"from": v[0], "to": v[1]} for k, v in sorted(patch.changes.items())},
    }
    if with_body:
        out["type"] = patch.patch_type
        out["body"] = _plain(patch.body)
    return out


REDACTED = "<redacted>"
_OURS = frozenset({MAX_INFLIGHT, THREAD_PCT, PINNED_MEM})


def plan_to_yaml(plan: Plan, *, pipeline: str, with_body: bool = True) -> str:
    """The plan as one YAML document; ``patches: []`` when nothing needs to change."""
    doc = {"pipeline": pipeline,
           "patches": [patch_to_dict(p, with_body=with_body) for p in plan.patches],
           "notes": list(plan.notes)}
    return yaml.safe_dump(doc, sort_keys=False, default_flow_style=False, width=100)


def _plain(value: Any, *, env: bool = False) -> Any:
    """Plain data, env values that are not sMoE's redacted: a container's ``env`` list of
    ``{name, value}`` entries, and the gateway's ``envVars`` / ``environment`` maps."""
    if isinstance(value, Mapping):
        if env:  # a name -> value map of environment variables
            return {str(k): v if k in _OURS else REDACTED for k, v in value.items()}
        out = {}
        for k, v in value.items():
            if k == "env" and isinstance(v, list | tuple):
                out[str(k)] = [_env_entry(e) for e in v]
            else:
                out[str(k)] = _plain(v, env=k in ("envVars", "environment"))
        return out
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


def _env_entry(entry: Any) -> Any:
    if isinstance(entry, Mapping) and "value" in entry and entry.get("name") not in _OURS:
        return {**{str(k): _plain(v) for k, v in entry.items()}, "value": REDACTED}
    return _plain(entry)
