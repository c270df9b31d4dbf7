"""The data the vertical planner reads and writes: live state in, patch records out.

Everything here is a frozen dataclass over plain JSON values. Backends build the live state from
their API (Kubernetes objects, the gateway plus ``stack.yml``, the simulator) and send the patch
records; the planner in between is pure.

Units: ``cpu`` cores, ``memory_mb`` MiB, ``gpu_share`` fraction of one GPU, ``concurrency``
OpenFaaS ``max_inflight`` (calls in flight per replica), times Unix seconds.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

__all__ = ["ObjectRef", "Patch", "PodState", "FunctionState", "PipelineState", "Knobs",
           "Writer", "PatchType"]

Writer = Literal["deployment", "function", "gateway", "simulated"]
"""Who owns a function's spec: the Deployment itself (patched directly), an OpenFaaS ``Function``
resource (the operator regenerates the Deployment), the gateway (``PUT /system/functions``), or
the simulator."""

PatchType = Literal["json", "merge", "put", "sim"]
"""How a body is sent: RFC 6902 JSON patch, RFC 7386 merge patch, a whole-spec PUT, or a
simulator change set."""




@dataclass(frozen=True, slots=True)
class Knobs:
    """One function's vertical knobs. None: not set on the object (or not known)."""

    cpu: float | None = None
    memory_mb: int | None = None
    gpu_share: float | None = None
    concurrency: int | None = None

    def get(self, knob: str) -> float | int | None:
        return getattr(self, knob)


@dataclass(frozen=True, slots=True)
class ObjectRef:
    """The object a patch targets. ``api`` is ``v1``, ``apps/v1``, ``openfaas.com/v1``,
    ``keda.sh/v1alpha1``, ``gateway`` (the OpenFaaS REST API) or ``sim``."""

    api: str
    kind: str
    namespace: str
    name: str

    def __str__(self) -> str:
        return f"{self.kind.lower()} {self.namespace}/{self.name}"


@dataclass(frozen=True, slots=True)
class Patch:
    """One change to one object, with why.

    ``changes`` maps what changes (``cpu``, ``env.max_inflight``, ``strategy``) to its
    ``(before, after)`` pair, for people; ``body`` is what is sent, for the API. ``rollout``:
    the patch replaces the function's pods, ``pods_replaced`` of them (0 when scaled to zero).
    """

    target: ObjectRef
    subresource: str | None
    patch_type: PatchType
    body: Any
    reason: str
    function: str
    node: str | None = None
    changes: Mapping[str, tuple[Any, Any]] = field(default_factory=dict)
    pods_replaced: int = 0
    rollout: bool = False


@dataclass(frozen=True, slots=True)
class PodState:
    """One running pod of a function, as far as the planner cares.

    ``container`` is the function's container (index ``container_index`` in the pod spec) with
    its ``resources`` as the API holds them. ``resize_pending`` is the reason of a
    ``PodResizePending`` condition (``Deferred`` or ``Infeasible``), ``resize_pending_since`` its
    lastTransitionTime (Unix seconds).
    """

    name: str
    container: Mapping[str, Any]
    container_index: int = 0
    running: bool = True
    ready: bool = True
    resize_pending: str | None = None
    resize_pending_since: float | None = None


@dataclass(frozen=True, slots=True)
class FunctionState:
    """One function as it is now.

    ``knobs`` are the template's values (what a new pod starts with); ``container`` the
    template's function container (index ``container_index``), ``env`` its environment.
    ``spec`` is the writer's whole spec where it needs one: the ``FunctionDeployment`` from
    ``stack.yml`` (gateway) or the ``Function`` resource's ``spec`` (operator).
    ``scaledobject`` names the KEDA ScaledObject scaling it, ``paused_by_us`` whether sMoE paused
    it for a rollout. ``rollout_done``: the Deployment has no rollout in progress.
    """

    function: str
    namespace: str
    writer: Writer
    knobs: Knobs
    env: Mapping[str, str] = field(default_factory=dict)
    container: Mapping[str, Any] = field(default_factory=dict)
    container_index: int = 0
    strategy: Mapping[str, Any] = field(default_factory=dict)
    template_annotations: Mapping[str, str] = field(default_factory=dict)
    node_selector: Mapping[str, str] = field(default_factory=dict)
    replicas: int = 0
    ready_replicas: int = 0
    pods: tuple[PodState, ...] = ()
    spec: Mapping[str, Any] = field(default_factory=dict)
    resource_version: str | None = None
    scaledobject: str | None = None
    paused_by_us: bool = False
    rollout_done: bool = True
    labels: Mapping[str, str] = field(default_factory=dict)
    """the function's labels (Deployment and pod template, or the stack's ``labels``)"""


@dataclass(frozen=True, slots=True)
class PipelineState:
    """Every function of one pipeline as it is now.

    ``missing`` names functions the backend could not read, with why (they get no patch).
    ``free_gpus`` is the free GPU capacity in GPUs (a free MPS slot counts its share); None when
    unknown, which the planner treats as no free slot.
    """

    pipeline: str
    namespace: str
    functions: Mapping[str, FunctionState]
    missing: Mapping[str, str] = field(default_factory=dict)
    free_gpus: float | None = None
