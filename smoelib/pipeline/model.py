"""Pure domain types shared by every part of sMoE: node specs, decisions, observations.

No I/O and no third-party imports beyond the standard library.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

NodeKind = Literal["expert", "segment", "join"]


@dataclass(frozen=True, slots=True)
class NodeSpec:
    """One node of the pipeline: an expert, a segment or a join.

    Units: ``cpu`` cores, ``memory_mb`` MiB, ``gpu_share`` fraction of one GPU (MPS thread
    percentage / 100; 0 is a CPU-only function), ``weights_mb`` MiB of parameters (drives cold
    start), ``base_ms`` and ``per_token_ms`` service time at ``gpu_share`` 1 (or per core when
    CPU-only). ``concurrency`` is OpenFaaS ``max_inflight`` (running + waiting per replica),
    ``parallelism`` the calls a replica runs at once. ``gpu_memory_mb`` is the pinned GPU memory
    limit of an ``mps-env`` expert (``CUDA_MPS_PINNED_DEVICE_MEM_LIMIT``, MiB; 0: none): a
    property of the expert, not a knob the policy turns. Joins carry no function and no
    resources.
    """

    id: str
    kind: NodeKind
    stage: str
    index: int | None = None
    function: str | None = None
    cpu: float = 0.0
    memory_mb: int = 0
    gpu_share: float = 0.0
    concurrency: int = 0
    parallelism: int = 0
    replicas_min: int = 0
    replicas_max: int = 0
    weights_mb: float = 0.0
    gpu_memory_mb: int = 0
    base_ms: float = 0.0
    per_token_ms: float = 0.0
    top_k: int | None = None
    layer_size: int | None = None
