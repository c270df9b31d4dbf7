"""Pure domain types shared by every part of sMoE: node specs, decisions, observations.

No I/O and no third-party imports beyond the standard library.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

NodeKind = Literal["expert", "segment", "join"]
PipelineKind = Literal["encoder", "decoder", "encoder-decoder"]


@dataclass(frozen=True, slots=True)
class SLO:
    """A pipeline's SLO as LLM serving states it: ``ttft_ms`` (time to first token: the
    prefill or encoder pass with its queueing), ``tpot_ms`` (per request, the mean time per
    output token after the first; None for encoder-only pipelines) and ``attainment`` (the
    share of requests that must meet both)."""

    ttft_ms: float
    tpot_ms: float | None = None
    attainment: float = 0.99

    @property
    def pass_ms(self) -> float:
        """The budget of one pass the experts are sized against: a decode pass (TPOT) when
        the pipeline decodes, else the one encoder pass (TTFT)."""
        return self.tpot_ms if self.tpot_ms is not None else self.ttft_ms


@dataclass(frozen=True, slots=True)
class NodeSpec:
    """One node of the pipeline: an expert, a segment or a join.

    Units: ``cpu`` cores, ``memory_mb`` MiB, ``gpu_share`` fraction of one GPU (MPS thread
    percentage / 100; 0 is a CPU-only function), ``weights_mb`` MiB of parameters (drives cold
    start), ``base_ms`` and ``per_token_ms`` a linear measured profile (FFN time at ``gpu_share``
    1, or on one core when CPU-only), ``profile_tokens``/``profile_ms`` a measured curve;
    without either, an expert's FFN time comes from its shape (``d_model``, ``d_ff``,
    ``matrices``, ``dtype``) on the pipeline's accelerator. ``handler_ms`` (per call) and
    ``serialise_ms_per_kb`` are the handler's CPU costs (None: the simulator's defaults).
    ``part`` is the half of an encoder-decoder pipeline the node belongs to; ``max_batch``
    the most calls a worker runs as one batch (0: every call waiting, up to ``concurrency``;
    1: a function that does not batch). ``concurrency``
    is OpenFaaS ``max_inflight`` (running + waiting per replica),
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
    profile_kind: Literal["none", "linear", "curve"] = "linear"
    profile_tokens: tuple[int, ...] = ()
    profile_ms: tuple[float, ...] = ()
    d_model: int = 0
    d_ff: int = 0
    matrices: int = 2
    dtype: str = "bf16"
    handler_ms: float | None = None
    serialise_ms_per_kb: float | None = None
    part: str = "encoder"
    max_batch: int = 0
