"""The knob set: what sMoE decides per expert, once. Pure.

Every part that enumerates knobs reads them from here: the decision type and its file format,
the guards, the simulator's targets, the vertical planner's records and slow-knob rules, the
action space in the settings and the policy's heads.

- ``replicas`` reaches the cluster through KEDA (the scaler's answer);
- ``cpu`` and ``memory_mb`` are pod resources, resized in place where the cluster has
  ``pods/resize`` (else they roll pods too);
- ``gpu_share`` (the MPS thread percentage / 100) and ``concurrency`` (OpenFaaS
  ``max_inflight``) are read once at process start: changing them always replaces pods.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

__all__ = ["Knob", "KNOBS", "KNOB_NAMES", "KNOB_COLUMN", "INTEGER_KNOBS", "VERTICAL_KNOBS",
           "SLOW_KNOBS", "RESOURCE_KNOBS"]


@dataclass(frozen=True, slots=True)
class Knob:
    """One knob: ``name`` (the decision field), ``kind`` (int or float), ``unit``, and
    ``meaning`` for people."""

    name: str
    kind: type
    unit: str
    meaning: str


KNOBS: tuple[Knob, ...] = (
    Knob("replicas", int, "pods", "replicas of the expert's function (through KEDA)"),
    Knob("cpu", float, "cores", "CPU request (and limit) of every replica"),
    Knob("memory_mb", int, "MiB", "memory request (and limit) of every replica"),
    Knob("gpu_share", float, "fraction of one GPU",
         "MPS share of one GPU (CUDA_MPS_ACTIVE_THREAD_PERCENTAGE / 100); 0: CPU only"),
    Knob("concurrency", int, "calls",
         "OpenFaaS max_inflight: calls in flight per replica (running + waiting)"),
)
KNOB_NAMES: tuple[str, ...] = tuple(k.name for k in KNOBS)
KNOB_COLUMN: Mapping[str, int] = MappingProxyType({k: j for j, k in enumerate(KNOB_NAMES)})
"""Each knob's column in a decision's knob array
(:class:`~smoelib.core.decisions.ExpertTable`)."""
INTEGER_KNOBS: tuple[bool, ...] = tuple(k.kind is int for k in KNOBS)
"""Per column of that array, whether the knob is a whole number."""
VERTICAL_KNOBS: tuple[str, ...] = ("cpu", "memory_mb", "gpu_share", "concurrency")
"""The knobs the vertical module patches (every knob but replicas); the action space offers
choices for each of them."""
SLOW_KNOBS: tuple[str, ...] = ("gpu_share", "concurrency")
"""Read once at process start: a change always replaces the function's pods (a rollout)."""
RESOURCE_KNOBS: tuple[str, ...] = ("cpu", "memory_mb")
"""Pod resources: in place where the cluster has ``pods/resize``, else slow like the others."""
