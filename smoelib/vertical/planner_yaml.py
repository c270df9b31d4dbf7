"""A plan as YAML, for dry runs and ``smoe plan``: what changes, on which object, and why. Pure."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import yaml

from smoelib.vertical.planner import Plan
from smoelib.vertical.records import Patch

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


def plan_to_yaml(plan: Plan, *, pipeline: str, with_body: bool = True) -> str:
    """The plan as one YAML document; ``patches: []`` when nothing needs to change."""
    doc = {"pipeline": pipeline,
           "patches": [patch_to_dict(p, with_body=with_body) for p in plan.patches],
           "notes": list(plan.notes)}
    return yaml.safe_dump(doc, sort_keys=False, default_flow_style=False, width=100)


def _plain(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value
