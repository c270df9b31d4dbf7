"""Pure functions over a function's container: read its knobs, rewrite its env and resources.

A container is the JSON mapping the Kubernetes API returns (``name``, ``image``, ``env`` as a
list of ``{name, value}``, ``resources`` with ``requests``/``limits``). Rewrites return new
mappings and keep everything else, so a patch can carry the whole container entry.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from smoelib.vertical.records import Knobs
from smoelib.vertical.units import (
    format_cpu,
    format_memory,
    parse_cpu,
    parse_memory_mb,
    share_from_percentage,
    thread_percentage,
)

__all__ = ["SharingRules", "MAX_INFLIGHT", "THREAD_PCT", "PINNED_MEM", "env_of", "with_env",
           "desired_env", "read_knobs", "qos_keeping", "resources_of", "desired_gpu"]

MAX_INFLIGHT = "max_inflight"
THREAD_PCT = "CUDA_MPS_ACTIVE_THREAD_PERCENTAGE"
PINNED_MEM = "CUDA_MPS_PINNED_DEVICE_MEM_LIMIT"


@dataclass(frozen=True, slots=True)
class SharingRules:
    """How the GPU share reaches a pod (see ``gpu_sharing`` and ``vertical`` in config.yaml)."""

    mode: str = "mps-env"
    slots_per_gpu: int = 4
    gpu_resource: str = "nvidia.com/gpu"
    mps_pool_label: str = ""


def env_of(container: Mapping[str, Any]) -> dict[str, str]:
    """The container's env as name -> value; a ``valueFrom`` entry reads as ``<valueFrom>``."""
    return {e["name"]: str(e["value"]) if "value" in e else "<valueFrom>"
            for e in container.get("env") or () if "name" in e}


def with_env(container: Mapping[str, Any], changes: Mapping[str, str | None]) -> dict[str, Any]:
    """A copy of ``container`` with env vars set (a string) or removed (None), order kept."""
    env = [dict(e) for e in container.get("env") or ()]
    seen = set()
    out = []
    for entry in env:
        name = entry.get("name")
        if name in changes:
            seen.add(name)
            if changes[name] is None:
                continue
            entry = {"name": name, "value": changes[name]}
        out.append(entry)
    out += [{"name": k, "value": v} for k, v in changes.items() if k not in seen and v is not None]
    new = dict(container)
    new["env"] = out
    return new


def desired_env(knobs: Knobs, rules: SharingRules, *, pinned_mb: int = 0
                ) -> dict[str, str | None]:
    """The env vars sMoE manages for ``knobs``: ``max_inflight`` always; under ``mps-env`` the
    MPS thread percentage and, for an expert with a pinned GPU memory limit (``pinned_mb``
    MiB, the pipeline's ``gpu_memory_mb``), that limit; both removed for a CPU-only expert."""
    env: dict[str, str | None] = {}
    if knobs.concurrency is not None:
        env[MAX_INFLIGHT] = str(knobs.concurrency)
    if rules.mode == "mps-env" and knobs.gpu_share is not None:
        gpu = knobs.gpu_share > 0
        env[THREAD_PCT] = str(thread_percentage(knobs.gpu_share)) if gpu else None
        if pinned_mb > 0:
            env[PINNED_MEM] = f"0={pinned_mb}MB" if gpu else None
    return env


def desired_gpu(share: float | None, rules: SharingRules
                ) -> tuple[str | None, str | None] | None:
    """``mps-device-plugin``: (GPU resource count, node-pool label value) for ``share``;
    None when the GPU is not the planner's to set (other modes, or no share decided)."""
    if rules.mode != "mps-device-plugin" or share is None:
        return None
    if share <= 0:
        return None, None
    pool = str(max(1, round(1.0 / share))) if rules.mps_pool_label else None
    return "1", pool


def resources_of(container: Mapping[str, Any]) -> tuple[float | None, int | None]:
    """(cpu cores, memory MiB) a container asks for: its requests, else its limits."""
    res = container.get("resources") or {}
    req, lim = res.get("requests") or {}, res.get("limits") or {}
    cpu = req.get("cpu", lim.get("cpu"))
    mem = req.get("memory", lim.get("memory"))
    return (None if cpu is None else parse_cpu(cpu),
            None if mem is None else parse_memory_mb(mem))


def read_knobs(container: Mapping[str, Any], node_selector: Mapping[str, str],
               rules: SharingRules) -> Knobs:
    """The knobs a pod made from ``container`` (and the pod's node selector) runs with."""
    cpu, mem = resources_of(container)
    env = env_of(container)
    share: float | None = None
    if rules.mode == "mps-env":
        share = share_from_percentage(env[THREAD_PCT]) if THREAD_PCT in env else 0.0
    elif rules.mode == "mps-device-plugin":
        limits = (container.get("resources") or {}).get("limits") or {}
        pool = node_selector.get(rules.mps_pool_label) if rules.mps_pool_label else None
        slots = int(pool) if pool and pool.isdigit() and int(pool) > 0 else rules.slots_per_gpu
        share = 1.0 / slots if rules.gpu_resource in limits else 0.0
    inflight = env.get(MAX_INFLIGHT)
    concurrency = int(inflight) if inflight is not None and inflight.isdigit() else None
    return Knobs(cpu=cpu, memory_mb=mem, gpu_share=share, concurrency=concurrency)


def qos_keeping(resources: Mapping[str, Any], *, cpu: float | None, memory_mb: int | None,
                gpu: tuple[str | None, str | None] | None = None,
                gpu_resource: str = "nvidia.com/gpu") -> dict[str, Any]:
    """``resources`` resized to ``cpu`` cores and ``memory_mb`` MiB, keeping the QoS class.

    Requests take the new value; a limit keeps its ratio to the request (a Guaranteed
    container stays requests == limits, a Burstable one keeps its headroom). A resource set on
    neither side stays unset (adding one would change a BestEffort pod's class). ``gpu`` sets or
    removes the GPU resource limit (``mps-device-plugin``).
    """
    req = dict(resources.get("requests") or {})
    lim = dict(resources.get("limits") or {})
    for key, value, parse, fmt in (("cpu", cpu, parse_cpu, format_cpu),
                                   ("memory", memory_mb, parse_memory_mb, _fmt_mem)):
        if value is None or (key not in req and key not in lim):
            continue
        if key in req:
            old = parse(req[key])
            if key in lim and old > 0:
                lim[key] = fmt(value * parse(lim[key]) / old)
            req[key] = fmt(value)
        else:
            lim[key] = fmt(value)
    if gpu is not None:
        count = gpu[0]
        for side in (req, lim):
            side.pop(gpu_resource, None)
        if count is not None:
            lim[gpu_resource] = count
            if resources.get("requests", {}).get(gpu_resource) is not None:
                req[gpu_resource] = count
    out = dict(resources)
    for key, side in (("requests", req), ("limits", lim)):
        if side:
            out[key] = side
        else:
            out.pop(key, None)
    return out


def _fmt_mem(mb: float) -> str:
    return format_memory(math.ceil(mb - 1e-9))
