"""Where the controller's observations come from: the ``MetricsSource`` port and Prometheus.

Every PromQL template sMoE runs lives in :data:`QUERIES`; ``config.yaml`` can override any of
them by name (``metrics.queries``). Templates take ``{pipeline}``, ``{namespace}`` and
``{window}`` (the rate window, e.g. ``30s``); every other brace is PromQL's own. Expert series
are grouped by ``expert`` (the node id); kube-state-metrics series by ``deployment`` (the
function name) or, for pods, by the OpenFaaS ``faas_function`` label.

A failure never becomes a default value: a source that is down, slow (every query has a
timeout), empty or returns NaN raises :class:`~smoelib.errors.TransientError`, and the
controller keeps its last good decision.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Protocol

import numpy as np
import requests
import urllib3
from prometheus_api_client import PrometheusApiClientException, PrometheusConnect
from urllib3.util.retry import Retry

from smoelib.core.observation import Observation
from smoelib.errors import PermanentError, TransientError
from smoelib.pipeline.topology import PipelineDAG

__all__ = ["QUERIES", "MetricsSource", "PrometheusSource"]

_E = 'pipeline="{pipeline}"'
_NS = 'namespace="{namespace}"'
QUERIES: dict[str, str] = {
    "calls_per_s": "sum by (expert) (rate(smoe_expert_calls_total{" + _E + "}[{window}]))",
    "tokens_per_s": "sum by (expert) (rate(smoe_expert_tokens_total{" + _E + "}[{window}]))",
    "rejected_per_s": "sum by (expert) (rate(smoe_expert_rejected_total{" + _E
                      + "}[{window}]))",
    "inflight": "sum by (expert) (smoe_expert_inflight{" + _E + "})",
    "latency_p50_ms": "1000 * histogram_quantile(0.5, sum by (expert, le) "
                      "(rate(smoe_expert_latency_seconds_bucket{" + _E + "}[{window}])))",
    "latency_p95_ms": "1000 * histogram_quantile(0.95, sum by (expert, le) "
                      "(rate(smoe_expert_latency_seconds_bucket{" + _E + "}[{window}])))",
    "replicas_ready": "sum by (deployment) (kube_deployment_status_replicas_ready{" + _NS
                      + "})",
    "replicas_desired": "sum by (deployment) (kube_deployment_spec_replicas{" + _NS + "})",
    "replicas_starting": "sum by (deployment) (kube_deployment_status_replicas_unavailable{"
                         + _NS + "})",
    "replicas_pending": "sum by (label_faas_function) (kube_pod_status_phase{" + _NS
                        + ',phase="Pending"} * on (namespace, pod) group_left '
                        "(label_faas_function) kube_pod_labels{" + _NS + "})",
    "cpu": "max by (container) (kube_pod_container_resource_requests{" + _NS
           + ',resource="cpu"})',
    "memory_mb": "max by (container) (kube_pod_container_resource_requests{" + _NS
                 + ',resource="memory"}) / 1048576',
    "sample_age_s": "time() - max(timestamp(smoe_expert_calls_total{" + _E + "}))",
    "request_rate": "sum(rate(smoe_pipeline_requests_total{" + _E + "}[{window}]))",
    "p95_ms": "1000 * histogram_quantile(0.95, sum by (le) "
              "(rate(smoe_pipeline_latency_seconds_bucket{" + _E + "}[{window}])))",
    "p99_ms": "1000 * histogram_quantile(0.99, sum by (le) "
              "(rate(smoe_pipeline_latency_seconds_bucket{" + _E + "}[{window}])))",
}
"""Template name -> PromQL. The label each per-node template groups by names the node."""

_GROUP_LABEL = {"replicas_ready": "deployment", "replicas_desired": "deployment",
                "replicas_starting": "deployment", "replicas_pending": "label_faas_function",
                "cpu": "container", "memory_mb": "container"}
_REQUIRED = ("calls_per_s", "replicas_ready")
"""Queries that must return series: without them the source is down or mis-configured."""
_MAY_BE_NAN = {"latency_p50_ms", "latency_p95_ms", "p95_ms", "p99_ms"}


class MetricsSource(Protocol):
    """Produces one :class:`Observation` of a pipeline per call."""

    def fetch(self, now: float) -> Observation:
        """The pipeline as of ``now`` (UNIX seconds). Raises TransientError when unavailable."""
        ...


class PrometheusSource:
    """Reads the ``smoe_*`` series and kube-state-metrics from Prometheus.

    Args:
        dag: the pipeline.
        url: Prometheus base URL.
        timeout_s: timeout of every query, seconds.
        window_s: rate window, seconds.
        queries: template overrides by name (unknown names are refused).
        configured: node id -> (gpu_share, concurrency) as last applied; those two knobs are
            read once at process start and no standard exporter reports them.
        max_sample_age_s: refuse data whose newest sample is older (an exporter that vanished
            is still answered from Prometheus' last samples for minutes), seconds.
    """

    def __init__(self, dag: PipelineDAG, *, url: str, timeout_s: float = 3.0,
                 window_s: float = 30.0, queries: Mapping[str, str] | None = None,
                 configured: Callable[[], Mapping[str, tuple[float, int]]] | None = None,
                 max_sample_age_s: float = 60.0):
        unknown = set(queries or {}) - set(QUERIES)
        if unknown:
            raise PermanentError(f"metrics.queries: unknown template {sorted(unknown)[0]!r}; "
                                 f"known: {', '.join(QUERIES)}")
        self.dag = dag
        self.timeout_s = timeout_s
        self.templates = {**QUERIES, **(queries or {})}
        self.window = f"{int(window_s)}s"
        self.configured = configured
        self.max_sample_age_s = max_sample_age_s
        # no retries below us: the controller owns them (backoff, keeping the last decision)
        self.client = PrometheusConnect(url=url, disable_ssl=True, timeout=timeout_s,
                                        retry=Retry(total=False))
        self._index = {n: i for i, n in enumerate(dag.nodes)}
        self._by_function = {f: n for n, f in dag.function_of.items()}

    def query(self, name: str) -> list[dict]:
        """Run template ``name``; the raw result vector."""
        promql = (self.templates[name].replace("{pipeline}", self.dag.name)
                  .replace("{namespace}", self.dag.namespace).replace("{window}", self.window))
        try:
            return self.client.custom_query(promql, timeout=self.timeout_s)
        except requests.Timeout as e:
            raise TransientError(f"Prometheus query {name!r} timed out after "
                                 f"{self.timeout_s:g} s") from e
        except (requests.RequestException, urllib3.exceptions.HTTPError) as e:
            raise TransientError(f"Prometheus unreachable for query {name!r}: "
                                 f"{type(e).__name__}") from e
        except PrometheusApiClientException as e:
            if "HTTP Status Code 5" in str(e):
                raise TransientError(f"Prometheus query {name!r}: {e}") from e
            raise PermanentError(f"Prometheus refused query {name!r}: {e}") from e
        except ValueError as e:  # a body that is not JSON
            raise TransientError(f"Prometheus query {name!r}: bad response ({e})") from e

    def _per_node(self, name: str) -> np.ndarray:
        out = np.full(len(self._index), np.nan if name in _MAY_BE_NAN else 0.0)
        result = self.query(name)
        if name in _REQUIRED and not result:
            raise TransientError(f"Prometheus returned no series for {name!r} of pipeline "
                                 f"{self.dag.name!r}")
        label = _GROUP_LABEL.get(name, "expert")
        for series in result:
            key = series.get("metric", {}).get(label)
            node = key if label == "expert" else self._by_function.get(key)
            if node not in self._index:
                continue  # a function outside the pipeline
            value = float(series["value"][1])
            if not math.isfinite(value) and name not in _MAY_BE_NAN:
                raise TransientError(f"Prometheus returned {value} for {name!r} of {node!r}")
            out[self._index[node]] = value
        return out

    def _scalar(self, name: str) -> float:
        result = self.query(name)
        if not result:
            return math.nan if name in _MAY_BE_NAN else 0.0
        value = float(result[0]["value"][1])
        if not math.isfinite(value) and name not in _MAY_BE_NAN:
            raise TransientError(f"Prometheus returned {value} for {name!r}")
        return value

    def fetch(self, now: float) -> Observation:
        age = self.query("sample_age_s")
        if not age:
            raise TransientError(f"Prometheus returned no series for 'sample_age_s' of "
                                 f"pipeline {self.dag.name!r}")
        newest = float(age[0]["value"][1])
        if not newest <= self.max_sample_age_s:
            raise TransientError(f"the newest sample of pipeline {self.dag.name!r} is "
                                 f"{newest:.0f} s old (limit {self.max_sample_age_s:g} s): "
                                 "its exporters are gone")
        per_node = {name: self._per_node(name) for name in (
            "calls_per_s", "tokens_per_s", "inflight", "rejected_per_s", "latency_p50_ms",
            "latency_p95_ms", "replicas_ready", "replicas_desired", "replicas_starting",
            "replicas_pending", "cpu", "memory_mb")}
        gpu_share = np.zeros(len(self._index))
        concurrency = np.zeros(len(self._index))
        applied = self.configured() if self.configured else {}
        for node, i in self._index.items():
            spec = self.dag.spec(node)
            share, conc = applied.get(node, (spec.gpu_share, spec.concurrency))
            gpu_share[i], concurrency[i] = share, conc
            if spec.kind != "join" and per_node["cpu"][i] == 0:
                per_node["cpu"][i] = spec.cpu  # no pod yet: the template's request
                per_node["memory_mb"][i] = spec.memory_mb
        obs = Observation(time_s=now, nodes=self.dag.nodes, gpu_share=gpu_share,
                          concurrency=concurrency, request_rate=self._scalar("request_rate"),
                          p95_ms=self._scalar("p95_ms"), p99_ms=self._scalar("p99_ms"),
                          **per_node)
        try:
            return obs.validate()
        except ValueError as e:
            raise TransientError(f"Prometheus data for {self.dag.name!r}: {e}") from e
