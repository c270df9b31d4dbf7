"""The scaler's own Prometheus metrics, on a registry the caller passes in.

- ``smoe_scaler_rpcs_total{method, code}``: RPCs answered, by method and gRPC status code name;
- ``smoe_scaler_rpc_duration_seconds{method}``: handler latency histogram (seconds);
- ``smoe_scaler_streams_open``: StreamIsActive streams open now;
- ``smoe_scaler_decision_age_seconds{pipeline}``: age of the served decision, computed from the
  store's clock at collection time (absent while a pipeline has no decision);
- ``smoe_scaler_decision_file_error{pipeline}``: 1 while the last decision file read was bad.
"""

from __future__ import annotations

from collections.abc import Iterator

import grpc
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from smoelib.scaler.store import DecisionStore

__all__ = ["ScalerTelemetry"]

# Handler latency is tens of microseconds when healthy; KEDA's HPA path allows 3 s in all.
_LATENCY_BUCKETS_S = (50e-6, 100e-6, 250e-6, 500e-6, 1e-3, 2.5e-3, 5e-3, 10e-3, 25e-3, 0.1, 1.0)


class ScalerTelemetry:
    """Counts and times RPCs; reports decision ages per pipeline when scraped.

    Args:
        registry: where the metrics are registered (never the global default implicitly).
        store: the store whose decision ages are reported.
    """

    def __init__(self, registry: CollectorRegistry, store: DecisionStore):
        self._rpcs = Counter("smoe_scaler_rpcs", "RPCs answered by the KEDA external scaler",
                             ["method", "code"], registry=registry)
        self._latency = Histogram("smoe_scaler_rpc_duration_seconds",
                                  "time spent answering one RPC, seconds", ["method"],
                                  buckets=_LATENCY_BUCKETS_S, registry=registry)
        self.streams_open = Gauge("smoe_scaler_streams_open",
                                  "StreamIsActive streams open now", registry=registry)
        registry.register(_DecisionCollector(store))
        # labels() costs a lock and a dict lookup per call: keep the children at hand.
        self._children: dict[tuple[str, grpc.StatusCode], tuple[Counter, Histogram]] = {}

    def observe(self, method: str, code: grpc.StatusCode, seconds: float | None) -> None:
        """Record one answered RPC: its method, status code and handler time in seconds (None
        for a stream, whose lifetime is no latency)."""
        children = self._children.get((method, code))
        if children is None:
            children = (self._rpcs.labels(method=method, code=code.name),
                        self._latency.labels(method=method))
            self._children[(method, code)] = children
        children[0].inc()
        if seconds is not None:
            children[1].observe(seconds)


class _DecisionCollector(Collector):
    """Decision age and file state per pipeline, read from the store at collection time."""

    def __init__(self, store: DecisionStore):
        self._store = store

    def describe(self) -> Iterator[GaugeMetricFamily]:
        yield from self._families()

    def collect(self) -> Iterator[GaugeMetricFamily]:
        age, error = self._families()
        for name in self._store.pipelines():
            seconds = self._store.decision_age_s(name)
            if seconds is not None:
                age.add_metric([name], seconds)
            error.add_metric([name], 1.0 if self._store.state(name).load_error else 0.0)
        yield age
        yield error

    @staticmethod
    def _families() -> tuple[GaugeMetricFamily, GaugeMetricFamily]:
        return (GaugeMetricFamily("smoe_scaler_decision_age_seconds",
                                  "seconds since the served decision was made, per pipeline",
                                  labels=["pipeline"]),
                GaugeMetricFamily("smoe_scaler_decision_file_error",
                                  "1 while the pipeline's last decision file read was rejected",
                                  labels=["pipeline"]))
