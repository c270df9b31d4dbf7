"""The few lines an expert function (or the MoE router that calls experts) adds to its handler.

No standard exporter knows how many tokens each expert receives, so sMoE defines the series it
reads and this module exports them with ``prometheus_client``::

    from prometheus_client import start_http_server
    from smoelib.instrument import ExpertMetrics

    metrics = ExpertMetrics(pipeline="bert-moe")
    start_http_server(8081)             # or mount prometheus_client.make_wsgi_app()

    def handle(req):
        tokens = decode(req)
        with metrics.call("moe1/e0", tokens=len(tokens)):
            return run_expert(tokens)

The router counts 429s it receives (``metrics.rejected(expert)``) and, once per request, what
LLM serving reports (``PipelineMetrics``)::

    pipeline = PipelineMetrics("gpt2-moe", slo_ttft_s=0.1, slo_tpot_s=0.05)
    pipeline.request(e2e_s, ttft_s=first_token_at - arrived, tpot_s=(e2e_s - ttft) / (n - 1))
    pipeline.dropped()       # a request given up (a call out of retries): a miss

``smoe_pipeline_ttft_seconds`` (time to first token), ``smoe_pipeline_tpot_seconds`` (the
request's mean time per output token after the first, vLLM's
``request_time_per_output_token``), ``smoe_pipeline_slo_met_total`` (requests within both
SLOs) and ``smoe_pipeline_dropped_total`` feed the controller's per-pass view. The registry
is injected (the default
is prometheus_client's global one, which ``start_http_server`` serves).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram

from smoelib.core.buckets import CALL_BUCKETS_S, PASS_BUCKETS_S

__all__ = ["ExpertMetrics", "PipelineMetrics", "SERIES", "CALL_BUCKETS_S", "PASS_BUCKETS_S"]


SERIES = {
    "calls": "smoe_expert_calls_total",
    "tokens": "smoe_expert_tokens_total",
    "inflight": "smoe_expert_inflight",
    "rejected": "smoe_expert_rejected_total",
    "latency": "smoe_expert_latency_seconds",
    "requests": "smoe_pipeline_requests_total",
    "request_latency": "smoe_pipeline_latency_seconds",
    "ttft": "smoe_pipeline_ttft_seconds",
    "tpot": "smoe_pipeline_tpot_seconds",
    "slo_met": "smoe_pipeline_slo_met_total",
    "dropped": "smoe_pipeline_dropped_total",
}
"""The series names the controller's queries read (prometheus_client adds ``_total`` itself)."""


class ExpertMetrics:
    """The ``smoe_expert_*`` series of a pipeline's experts, labelled ``pipeline`` and ``expert``.

    Create one per pipeline per registry (an expert's handler or a router that calls many
    experts); series are registered once.

    Args:
        pipeline: the pipeline name from ``pipeline.yml``.
        registry: where the series are registered.
        clock: seconds, monotonic; injected for tests.
    """

    def __init__(self, pipeline: str, *, registry: CollectorRegistry = REGISTRY,
                 clock: Callable[[], float] = time.perf_counter):
        labels = ("pipeline", "expert")
        self.pipeline = pipeline
        self._clock = clock
        self._calls = Counter("smoe_expert_calls", "expert calls served", labels,
                              registry=registry)
        self._tokens = Counter("smoe_expert_tokens", "tokens processed by the expert", labels,
                               registry=registry)
        self._inflight = Gauge("smoe_expert_inflight", "calls in flight (running + waiting)",
                               labels, registry=registry)
        self._rejected = Counter("smoe_expert_rejected", "calls answered 429 (max_inflight)",
                                 labels, registry=registry)
        self._latency = Histogram("smoe_expert_latency_seconds", "expert call latency",
                                  labels, buckets=CALL_BUCKETS_S, registry=registry)

    @contextmanager
    def call(self, expert: str, *, tokens: int) -> Iterator[None]:
        """Count one call of ``expert`` (node id) over ``tokens`` tokens; its latency is the
        time spent inside the block."""
        inflight = self._inflight.labels(self.pipeline, expert)
        inflight.inc()
        start = self._clock()
        try:
            yield
        finally:
            self._latency.labels(self.pipeline, expert).observe(self._clock() - start)
            inflight.dec()
            self._calls.labels(self.pipeline, expert).inc()
            self._tokens.labels(self.pipeline, expert).inc(tokens)

    def rejected(self, expert: str, n: int = 1) -> None:
        """Count calls of ``expert`` that were answered 429 (the watchdog's max_inflight)."""
        self._rejected.labels(self.pipeline, expert).inc(n)


class PipelineMetrics:
    """The ``smoe_pipeline_*`` series of one pipeline (label ``pipeline``).

    Args:
        pipeline: the pipeline name.
        slo_ttft_s, slo_tpot_s: the pipeline's SLOs (seconds); a request counts in
            ``smoe_pipeline_slo_met_total`` when its TTFT and TPOT are within them (an SLO
            left None is not checked).
        registry: where the series are registered.
    """

    def __init__(self, pipeline: str, *, slo_ttft_s: float | None = None,
                 slo_tpot_s: float | None = None, registry: CollectorRegistry = REGISTRY):
        one = ("pipeline",)
        self._slo = (slo_ttft_s, slo_tpot_s)
        self._requests = Counter("smoe_pipeline_requests", "requests served or dropped", one,
                                 registry=registry).labels(pipeline)
        self._latency = Histogram("smoe_pipeline_latency_seconds", "end-to-end request latency",
                                  one, buckets=PASS_BUCKETS_S,
                                  registry=registry).labels(pipeline)
        self._ttft = Histogram("smoe_pipeline_ttft_seconds", "time to first token", one,
                               buckets=PASS_BUCKETS_S, registry=registry).labels(pipeline)
        self._tpot = Histogram("smoe_pipeline_tpot_seconds", "mean time per output token after "
                               "the first, per request", one, buckets=PASS_BUCKETS_S,
                               registry=registry).labels(pipeline)
        self._met = Counter("smoe_pipeline_slo_met", "requests within the TTFT and TPOT SLOs",
                            one, registry=registry).labels(pipeline)
        self._dropped = Counter("smoe_pipeline_dropped", "requests given up (a miss)", one,
                                registry=registry).labels(pipeline)

    def request(self, seconds: float, *, ttft_s: float | None = None,
                tpot_s: float | None = None) -> None:
        """Record one finished request: its end-to-end latency, TTFT and (when it generated
        more than one token) TPOT, and whether it met the SLOs."""
        self._requests.inc()
        self._latency.observe(seconds)
        ttft = seconds if ttft_s is None else ttft_s
        self._ttft.observe(ttft)
        if tpot_s is not None:
            self._tpot.observe(tpot_s)
        slo_ttft, slo_tpot = self._slo
        if (slo_ttft is None or ttft <= slo_ttft) and (
                slo_tpot is None or tpot_s is None or tpot_s <= slo_tpot):
            self._met.inc()

    def dropped(self) -> None:
        """Record one dropped request: it counts as a request and a miss (its latency is
        infinite; the histograms' sums stay finite)."""
        self._requests.inc()
        self._dropped.inc()
