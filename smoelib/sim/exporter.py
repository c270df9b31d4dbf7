"""``/metrics`` for the simulated cluster: the series the controller's queries read.

The ``smoe_expert_*`` and ``smoe_pipeline_*`` series (names from
:data:`smoelib.instrument.SERIES`, labels ``pipeline`` and ``expert``) and the
kube-state-metrics series of :data:`smoelib.control.metrics.QUERIES` (``deployment``, ``container``,
per-pod ``Pending`` phase with ``label_faas_function``). A collector on an injected registry
reads the latest :func:`snapshot` the simulation published; serving it is the caller's choice
(:func:`serve` starts prometheus_client's HTTP server on that registry).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import numpy as np
from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
)

from smoelib.sim.telemetry import CALL_BOUNDS_S, PASS_BOUNDS_S

__all__ = ["SimCollector", "snapshot", "serve"]


def snapshot(env) -> dict[str, Any]:
    """Everything the exporter shows, copied out of a running :class:`SimEnv`."""
    t = env.tick * env.dt
    counts = env.cluster.counts(t, env.n)
    return {"totals": {k: np.array(v, copy=True) for k, v in env.tel.totals.items()},
            "inflight": env.server.inflight_at(t, env.n, env.cluster),
            "ready": counts["ready"], "pending": counts["pending"],
            "starting": counts["starting"], "desired": env.spec_replicas.copy(),
            "cpu": env.size[:, 0].copy(), "memory_mb": env.size[:, 1].copy()}


def _buckets(hist: np.ndarray, bounds: np.ndarray = PASS_BOUNDS_S) -> list[tuple[str, float]]:
    cum = np.cumsum(hist)
    return [("+Inf" if np.isinf(b) else repr(float(b)), float(c)) for b, c in zip(
        bounds, cum, strict=True)]


class SimCollector:
    """A prometheus_client collector over the latest snapshot of one pipeline."""

    def __init__(self, dag):
        self.dag = dag
        self.nodes = tuple(dag.nodes)
        self.functions = [dag.spec(n).function for n in self.nodes]
        self._lock = threading.Lock()
        self._snap: dict[str, Any] | None = None

    def publish(self, snap: dict[str, Any]) -> None:
        with self._lock:
            self._snap = snap

    def collect(self) -> Iterator[Any]:
        with self._lock:
            snap = self._snap
        if snap is None:
            return
        p, ns, tot = self.dag.name, self.dag.namespace, snap["totals"]
        labels = ["pipeline", "expert"]
        fams = {k: CounterMetricFamily(f"smoe_expert_{k}", f"simulated expert {k}",
                                       labels=labels) for k in ("calls", "tokens", "rejected")}
        inflight = GaugeMetricFamily("smoe_expert_inflight", "calls in flight", labels=labels)
        lat = HistogramMetricFamily("smoe_expert_latency_seconds", "call latency",
                                    labels=labels)
        for i, node in enumerate(self.nodes):
            if self.functions[i] is None:
                continue
            for k, fam in fams.items():
                fam.add_metric([p, node], float(tot[k][i]))
            inflight.add_metric([p, node], float(snap["inflight"][i]))
            lat.add_metric([p, node], _buckets(tot["lat_hist"][i], CALL_BOUNDS_S),
                           float(tot["lat_sum"][i]))
        yield from (*fams.values(), inflight, lat)
        req = CounterMetricFamily("smoe_pipeline_requests", "requests", labels=["pipeline"])
        req.add_metric([p], float(tot["slo_total"][0]))  # ended: served or dropped (as the
        # instrument helper counts them, so attainment = met / requests)
        e2e = HistogramMetricFamily("smoe_pipeline_latency_seconds", "end-to-end latency",
                                    labels=["pipeline"])
        e2e.add_metric([p], _buckets(tot["e2e_hist"]), float(tot["e2e_sum"][0]))
        ttft = HistogramMetricFamily("smoe_pipeline_ttft_seconds", "time to first token",
                                     labels=["pipeline"])
        ttft.add_metric([p], _buckets(tot["ttft_hist"]), 0.0)
        tpot = HistogramMetricFamily("smoe_pipeline_tpot_seconds", "mean time per output "
                                     "token after the first", labels=["pipeline"])
        tpot.add_metric([p], _buckets(tot["tpot_hist"]), 0.0)
        met = CounterMetricFamily("smoe_pipeline_slo_met", "requests within the SLOs",
                                  labels=["pipeline"])
        met.add_metric([p], float(tot["slo_met"][0]))
        dropped = CounterMetricFamily("smoe_pipeline_dropped", "dropped requests",
                                      labels=["pipeline"])
        dropped.add_metric([p], float(tot["dropped"][0]))
        yield from (req, e2e, ttft, tpot, met, dropped)
        yield from self._kube(snap, ns)

    def _kube(self, snap: dict[str, Any], ns: str) -> Iterator[Any]:
        dep = ["namespace", "deployment"]
        ready = GaugeMetricFamily("kube_deployment_status_replicas_ready", "ready", labels=dep)
        spec = GaugeMetricFamily("kube_deployment_spec_replicas", "desired", labels=dep)
        unavail = GaugeMetricFamily("kube_deployment_status_replicas_unavailable", "not ready",
                                    labels=dep)
        req = GaugeMetricFamily("kube_pod_container_resource_requests", "requests",
                                labels=["namespace", "container", "resource", "unit"])
        phase = GaugeMetricFamily("kube_pod_status_phase", "phase",
                                  labels=["namespace", "pod", "phase"])
        # kube-state-metrics as shipped: kube_pod_owner names the ReplicaSet (no --metric-labels-
        # allowlist is needed); kube_pod_labels would carry no label_faas_function
        owner = GaugeMetricFamily("kube_pod_owner", "owner",
                                  labels=["namespace", "pod", "owner_kind", "owner_name"])
        for i, fn in enumerate(self.functions):
            if fn is None:
                continue
            ready.add_metric([ns, fn], float(snap["ready"][i]))
            spec.add_metric([ns, fn], float(snap["desired"][i]))
            unavail.add_metric([ns, fn], float(snap["starting"][i] + snap["pending"][i]))
            req.add_metric([ns, fn, "cpu", "core"], float(snap["cpu"][i]))
            req.add_metric([ns, fn, "memory", "byte"], float(snap["memory_mb"][i]) * 1048576)
            pods = int(snap["ready"][i] + snap["starting"][i])
            for k in range(pods + int(snap["pending"][i])):
                pod = f"{fn}-7d9f-{k}"
                pending = k >= pods
                phase.add_metric([ns, pod, "Running"], 0.0 if pending else 1.0)
                phase.add_metric([ns, pod, "Pending"], 1.0 if pending else 0.0)
                owner.add_metric([ns, pod, "ReplicaSet", f"{fn}-7d9f"], 1.0)
        yield from (ready, spec, unavail, req, phase, owner)


def serve(collector: SimCollector, port: int, *, registry: CollectorRegistry | None = None,
          addr: str = "127.0.0.1") -> Any:
    """Register ``collector`` on ``registry`` (a new one by default) and serve it on ``port``
    (0: any free port). Returns the HTTP server: ``server.server_port`` is the bound port,
    ``server.shutdown()`` stops it."""
    registry = registry or CollectorRegistry(auto_describe=False)
    registry.register(collector)
    server, _thread = start_http_server(port, addr=addr, registry=registry)
    return server
