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

The router counts 429s it receives (``metrics.rejected(expert)``) and, once per request, the
end-to-end latency (``PipelineMetrics.request(seconds)``). The registry is injected (the default
is prometheus_client's global one, which ``start_http_server`` serves).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram

__all__ = ["ExpertMetrics", "PipelineMetrics", "SERIES", "LATENCY_BUCKETS_S"]

LATENCY_BUCKETS_S = (0.001, 0.0025, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.03, 0.05, 0.075, 0.1,
                     0.15, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0)
"""Histogram buckets (seconds): fine below the 80-120 ms SLOs, coarse up to cold starts."""

SERIES = {
    "calls": "smoe_expert_calls_total",
    "tokens": "smoe_expert_tokens_total",
    "inflight": "smoe_expert_inflight",
    "rejected": "smoe_expert_rejected_total",
    "latency": "smoe_expert_latency_seconds",
    "requests": "smoe_pipeline_requests_total",
    "request_latency": "smoe_pipeline_latency_seconds",
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
                                  labels, buckets=LATENCY_BUCKETS_S, registry=registry)

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
    """``smoe_pipeline_requests_total`` and ``smoe_pipeline_latency_seconds`` of a pipeline."""

    def __init__(self, pipeline: str, *, registry: CollectorRegistry = REGISTRY):
        self._requests = Counter("smoe_pipeline_requests", "requests served end to end",
                                 ("pipeline",), registry=registry).labels(pipeline)
        self._latency = Histogram("smoe_pipeline_latency_seconds", "end-to-end request latency",
                                  ("pipeline",), buckets=LATENCY_BUCKETS_S,
                                  registry=registry).labels(pipeline)

    def request(self, seconds: float) -> None:
        """Record one finished request and its end-to-end latency."""
        self._requests.inc()
        self._latency.observe(seconds)
