"""Where the controller's observations come from: the ``MetricsSource`` port and Prometheus.

Every PromQL template sMoE runs lives in :data:`QUERIES`; ``config.yaml`` can override any of
them by name (``metrics.queries``). Templates take ``{pipeline}``, ``{namespace}`` and
``{window}`` (the rate window, e.g. ``30s``); every other brace is PromQL's own. Expert series
are grouped by ``expert`` (the node id); kube-state-metrics series by ``deployment`` (the
function name) or, for pods, by the OpenFaaS ``faas_function`` label.

A failure never becomes a default value. Every answer shape Prometheus' HTTP API can give maps
to one error naming the query (:meth:`PrometheusSource.query`): unreachable or timed out, an
HTTP 5xx, a body that is not JSON, ``status: error`` (``bad_data`` is the query's fault:
:class:`~smoelib.errors.PermanentError`; anything else :class:`~smoelib.errors.TransientError`),
no ``data.result``, a result type other than an instant vector or scalar (a range vector from
a ``metrics.queries`` override is a permanent mistake), a result that is not a list, a sample
without a value or with one that is not a number; an empty answer for a required series, NaN
where a number is needed. The controller keeps its last good decision on every one of them.

Over https the server's certificate is verified (``metrics.ca_bundle`` names a CA bundle;
``metrics.tls_verify: false`` is the explicit, logged opt-out).
"""

from __future__ import annotations

import logging
import math
import warnings
from collections.abc import Callable, Mapping

import numpy as np
import requests
import urllib3

from smoelib.core.observation import Observation
from smoelib.core.ports import MetricsSource
from smoelib.errors import ConfigError, PermanentError, Problem, TransientError
from smoelib.pipeline.topology import PipelineDAG

__all__ = ["QUERIES", "MetricsSource", "PrometheusSource", "query_problems"]

log = logging.getLogger("smoelib.metrics")

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
    "replicas_pending": "sum by (deployment) (kube_pod_status_phase{" + _NS
                        + ',phase="Pending"} * on (namespace, pod) group_left (deployment) '
                        'label_replace(kube_pod_owner{' + _NS + ',owner_kind="ReplicaSet"}, '
                        '"deployment", "$1", "owner_name", "(.*)-[^-]+"))',
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
    "ttft_p95_ms": "1000 * histogram_quantile(0.95, sum by (le) "
                   "(rate(smoe_pipeline_ttft_seconds_bucket{" + _E + "}[{window}])))",
    "tpot_p95_ms": "1000 * histogram_quantile(0.95, sum by (le) "
                   "(rate(smoe_pipeline_tpot_seconds_bucket{" + _E + "}[{window}])))",
    "slo_attainment": "sum(rate(smoe_pipeline_slo_met_total{" + _E + "}[{window}])) / "
                      "sum(rate(smoe_pipeline_requests_total{" + _E + "}[{window}]))",
    "dropped_per_s": "sum(rate(smoe_pipeline_dropped_total{" + _E + "}[{window}]))",
}
"""Template name -> PromQL. The label each per-node template groups by names the node."""

_GROUP_LABEL = {"replicas_ready": "deployment", "replicas_desired": "deployment",
                "replicas_starting": "deployment", "replicas_pending": "deployment",
                "cpu": "container", "memory_mb": "container"}
_REQUIRED = ("calls_per_s", "replicas_ready")
"""Queries that must return series: without them the source is down or mis-configured."""
_MAY_BE_NAN = {"latency_p50_ms", "latency_p95_ms", "p95_ms", "p99_ms", "ttft_p95_ms",
               "tpot_p95_ms", "slo_attainment", "dropped_per_s"}
"""Unknown (NaN) when Prometheus has no series: a window without finished requests, or a router
that does not export the per-pass series (never a made-up 0)."""


def query_problems(queries: Mapping[str, str]) -> list[Problem]:
    """A problem per ``metrics.queries`` override that names no template (what ``smoe serve``
    refuses, and ``smoe validate`` with it)."""
    return [Problem(f"metrics.queries.{name}", "unknown template; known: " + ", ".join(QUERIES))
            for name in sorted(set(queries) - set(QUERIES))]


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
        verify: https certificate verification: True (the system's CAs), a CA bundle path,
            or False (not verified; logged once).
        session: the HTTP session (default: a new one; no retries below the controller's).
    """

    def __init__(self, dag: PipelineDAG, *, url: str, timeout_s: float = 3.0,
                 window_s: float = 30.0, queries: Mapping[str, str] | None = None,
                 configured: Callable[[], Mapping[str, tuple[float, int]]] | None = None,
                 max_sample_age_s: float = 60.0, verify: bool | str = True,
                 session: requests.Session | None = None):
        problems = query_problems(queries or {})
        if problems:
            raise ConfigError(problems)
        self.dag = dag
        self.timeout_s = timeout_s
        self.templates = {**QUERIES, **(queries or {})}
        self.overrides = tuple(queries or ())
        self.unknown: set[str] = set()
        """the templates whose value is unknown now (no series), said once each"""
        self._empty: dict[str, bool] = {}
        self.window = f"{int(window_s)}s"
        self.configured = configured
        self.max_sample_age_s = max_sample_age_s
        self.url = url.rstrip("/")
        self.verify = verify
        # no retries below us: the controller owns them (backoff, keeping the last decision)
        self.session = session or requests.Session()
        if url.startswith("https://") and verify is False:
            log.warning("metrics.tls_verify is false: Prometheus at %s is not verified", url)
        self._index = {n: i for i, n in enumerate(dag.nodes)}
        self._by_function = {f: n for n, f in dag.function_of.items()}

    def query(self, name: str) -> list[dict]:
        """Run template ``name``; the instant vector's samples (a scalar answer is one sample).

        Raises:
            TransientError: Prometheus is unreachable, slow, failing or answered nonsense.
            PermanentError: the query itself is wrong (``bad_data``, a range vector).
        """
        promql = (self.templates[name].replace("{pipeline}", self.dag.name)
                  .replace("{namespace}", self.dag.namespace).replace("{window}", self.window))
        where = f"Prometheus query {name!r}"
        try:
            with warnings.catch_warnings():  # the opt-out was logged once, at construction
                warnings.simplefilter("ignore", urllib3.exceptions.InsecureRequestWarning)
                rsp = self.session.get(f"{self.url}/api/v1/query", params={"query": promql},
                                       timeout=self.timeout_s, verify=self.verify)
        except requests.Timeout as e:
            raise TransientError(f"{where} timed out after {self.timeout_s:g} s") from e
        except requests.exceptions.SSLError as e:
            raise PermanentError(f"{where}: the server's certificate is not trusted ({e}); "
                                 "set metrics.ca_bundle") from e
        except requests.RequestException as e:
            raise TransientError(f"Prometheus unreachable for query {name!r}: "
                                 f"{type(e).__name__}") from e
        try:
            body = rsp.json()
        except ValueError:
            body = None
        if rsp.status_code >= 500:
            raise TransientError(f"{where}: Prometheus answered HTTP {rsp.status_code}"
                                 + _error_of(body))
        if not isinstance(body, dict):
            raise TransientError(f"{where}: HTTP {rsp.status_code} with a body that is not a "
                                 "JSON object")
        if body.get("status") != "success":
            kind = body.get("errorType")
            message = f"{where}: Prometheus answered status {body.get('status')!r}" + \
                _error_of(body)
            if kind == "bad_data" or 400 <= rsp.status_code < 500:
                raise PermanentError(message)
            raise TransientError(message)
        data = body.get("data")
        if not isinstance(data, dict) or "result" not in data:
            raise TransientError(f"{where}: the answer has no data.result")
        kind, result = data.get("resultType"), data["result"]
        if kind == "scalar":
            return [{"metric": {}, "value": _sample(result, where)}]
        if kind != "vector":
            raise PermanentError(f"{where} returns a {kind!r}, not an instant vector: "
                                 "check its metrics.queries override")
        if not isinstance(result, list):
            raise TransientError(f"{where}: data.result is a {type(result).__name__}, not a "
                                 "list")
        for series in result:
            if not isinstance(series, dict) or not isinstance(series.get("metric", {}), dict):
                raise TransientError(f"{where}: a series that is not an object")
            series["value"] = _sample(series.get("value"), where)
        return result

    def _unknown(self, name: str, why: str) -> None:
        if name not in self.unknown:
            self.unknown.add(name)
            log.warning("%s: %s", name, why)

    def check_overrides(self) -> list[str]:
        """Run every ``metrics.queries`` override once and check its answer's shape (what
        ``smoe serve`` does before it listens). Returns a note per override that could not be
        checked because Prometheus is unreachable or failing now.

        Raises:
            PermanentError: an override returns something that is not an instant vector, or
                Prometheus refuses it (``bad_data``).
        """
        notes = []
        for name in self.overrides:
            try:
                self.query(name)
            except TransientError as e:
                notes.append(f"metrics.queries.{name}: not checked at start ({e})")
        return notes

    def _per_node(self, name: str) -> np.ndarray:
        out = np.full(len(self._index), np.nan if name in _MAY_BE_NAN else 0.0)
        result = self.query(name)
        self._empty[name] = not result
        if name in _REQUIRED and not result:
            raise TransientError(f"Prometheus returned no series for {name!r} of pipeline "
                                 f"{self.dag.name!r}")
        label = _GROUP_LABEL.get(name, "expert")
        for series in result:
            key = series.get("metric", {}).get(label)
            node = key if label == "expert" else self._by_function.get(key)
            if node not in self._index:
                continue  # a function outside the pipeline
            value = series["value"][1]
            if not math.isfinite(value) and name not in _MAY_BE_NAN:
                raise TransientError(f"Prometheus returned {value} for {name!r} of {node!r}")
            out[self._index[node]] = value
        return out

    def _scalar(self, name: str) -> float:
        result = self.query(name)
        if not result:
            return math.nan if name in _MAY_BE_NAN else 0.0
        value = result[0]["value"][1]
        if not math.isfinite(value) and name not in _MAY_BE_NAN:
            raise TransientError(f"Prometheus returned {value} for {name!r}")
        return value

    def fetch(self, now: float) -> Observation:
        age = self.query("sample_age_s")
        if not age:
            raise TransientError(f"Prometheus returned no series for 'sample_age_s' of "
                                 f"pipeline {self.dag.name!r}")
        newest = age[0]["value"][1]
        if math.isnan(newest):
            raise TransientError(f"Prometheus returned NaN for the age of the newest sample of "
                                 f"pipeline {self.dag.name!r} ('sample_age_s')")
        if not newest <= self.max_sample_age_s:
            raise TransientError(f"the newest sample of pipeline {self.dag.name!r} is "
                                 f"{newest:.0f} s old (limit {self.max_sample_age_s:g} s): "
                                 "its exporters are gone")
        per_node = {name: self._per_node(name) for name in (
            "calls_per_s", "tokens_per_s", "inflight", "rejected_per_s", "latency_p50_ms",
            "latency_p95_ms", "replicas_ready", "replicas_desired", "replicas_starting",
            "replicas_pending", "cpu", "memory_mb")}
        # kube_deployment_status_replicas_unavailable counts pending pods too: starting is the
        # rest. No pending series at all (kube_pod_owner not exported, say) is unknown, not 0.
        if self._empty.get("replicas_pending"):
            per_node["replicas_pending"][:] = math.nan
            self._unknown("replicas_pending", "kube-state-metrics exports no kube_pod_status_phase"
                          " x kube_pod_owner series for the pipeline's pods: pending replicas "
                          "are unknown (counted as starting)")
        else:
            self.unknown.discard("replicas_pending")
            per_node["replicas_starting"] = np.maximum(
                per_node["replicas_starting"] - per_node["replicas_pending"], 0.0)
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
                          ttft_p95_ms=self._scalar("ttft_p95_ms"),
                          tpot_p95_ms=self._scalar("tpot_p95_ms"),
                          slo_attainment=self._scalar("slo_attainment"),
                          dropped_per_s=self._scalar("dropped_per_s"), **per_node)
        try:
            return obs.validate()
        except ValueError as e:
            raise TransientError(f"Prometheus data for {self.dag.name!r}: {e}") from e


def _sample(value: object, where: str) -> tuple[float, float]:
    """``[timestamp, "number"]`` as floats (Prometheus writes values as strings: "NaN" and
    "+Inf" included)."""
    if not isinstance(value, list | tuple) or len(value) != 2:
        raise TransientError(f"{where}: a sample without a [time, value] pair ({value!r})")
    try:
        return float(value[0]), float(value[1])
    except (TypeError, ValueError):
        raise TransientError(f"{where}: sample value {value[1]!r} is not a number") from None


def _error_of(body: object) -> str:
    if isinstance(body, dict) and body.get("error"):
        return f" ({body.get('errorType', 'error')}: {str(body['error'])[:200]})"
    return ""
