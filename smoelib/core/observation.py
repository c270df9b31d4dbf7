"""What the controller reads (from Prometheus, or from the simulator), as one frozen record per
tick. The one observation type: the Prometheus source, the simulator, the guards, the features
of the learned policy and the baselines all read this record.

Per-node arrays follow ``dag.nodes`` order (joins carry zeros). Sources (DESIGN.md "Metrics"):
``smoe_expert_calls_total``, ``smoe_expert_tokens_total``, ``smoe_expert_rejected_total`` as
rates over the rate window; ``smoe_expert_inflight`` now; ``smoe_expert_latency_seconds`` p50/p95
by ``histogram_quantile`` over the window; replicas from kube-state-metrics
(``kube_deployment_status_replicas_ready``, ``kube_deployment_spec_replicas``, and pods not yet
ready / Pending); the current config of each function; the pipeline's request rate and
end-to-end p95/p99 (``smoe_pipeline_requests_total``, ``smoe_pipeline_latency_seconds``).

Room for the per-pass view of LLM serving: ``ttft_p95_ms`` and ``tpot_p95_ms`` (time to first
token, time per output token), ``slo_attainment`` (the share of the window's requests that met
the SLO) and ``dropped_per_s``. A source that does not measure one leaves it NaN (unknown, never
a made-up 0); :func:`smoelib.core.slo.slo_pressure` compares whichever latencies are known with
their SLOs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

import numpy as np

__all__ = ["Observation", "NODE_FIELDS"]

NODE_FIELDS = ("calls_per_s", "tokens_per_s", "inflight", "rejected_per_s", "latency_p50_ms",
               "latency_p95_ms", "replicas_ready", "replicas_desired", "replicas_starting",
               "replicas_pending", "cpu", "memory_mb", "gpu_share", "concurrency")
_MAY_BE_NAN = {"latency_p50_ms", "latency_p95_ms", "p95_ms", "p99_ms", "ttft_p95_ms",
               "tpot_p95_ms", "slo_attainment", "dropped_per_s", "replicas_pending"}
"""Fields a source may not know (NaN): latencies of a window without calls, per-pass figures a
source does not measure, pending replicas without the kube-state-metrics series for them."""


@dataclass(frozen=True, eq=False)
class Observation:
    """One tick's view of a pipeline.

    Units: rates per second, latencies milliseconds (NaN where the window saw no call), cpu
    cores, memory MiB, gpu_share fraction of a GPU, concurrency calls, ``slo_attainment`` a
    fraction, ``time_s`` the source's clock (Unix seconds from Prometheus, seconds since the
    episode start in the simulator). Shapes: every per-node array is ``(len(nodes),)``.
    """

    time_s: float
    nodes: tuple[str, ...]
    calls_per_s: np.ndarray
    tokens_per_s: np.ndarray
    inflight: np.ndarray
    rejected_per_s: np.ndarray
    latency_p50_ms: np.ndarray
    latency_p95_ms: np.ndarray
    replicas_ready: np.ndarray
    replicas_desired: np.ndarray
    replicas_starting: np.ndarray
    replicas_pending: np.ndarray
    cpu: np.ndarray
    memory_mb: np.ndarray
    gpu_share: np.ndarray
    concurrency: np.ndarray
    request_rate: float
    p95_ms: float
    p99_ms: float
    ttft_p95_ms: float = math.nan
    tpot_p95_ms: float = math.nan
    slo_attainment: float = math.nan
    dropped_per_s: float = math.nan

    def validate(self) -> Observation:
        """Check shapes and refuse NaN or negative values where they would mislead a policy
        (counts, rates, replicas, config); latency quantiles may be NaN (no data)."""
        n = len(self.nodes)
        for f in fields(self):
            v = getattr(self, f.name)
            if f.name in ("nodes",):
                continue
            arr = np.asarray(v, dtype=float)
            if f.name in NODE_FIELDS and arr.shape != (n,):
                raise ValueError(f"observation.{f.name}: shape {arr.shape}, expected ({n},)")
            if f.name not in _MAY_BE_NAN and not np.isfinite(arr).all():
                raise ValueError(f"observation.{f.name}: NaN or infinite value")
            if f.name not in _MAY_BE_NAN and (arr < 0).any():
                raise ValueError(f"observation.{f.name}: negative value")
        return self

    def node(self, node_id: str) -> dict[str, float]:
        """Every per-node field of one node, by name."""
        i = self.nodes.index(node_id)
        return {name: float(getattr(self, name)[i]) for name in NODE_FIELDS}
