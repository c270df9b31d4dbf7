"""The simulator's exporter emits the series the controller's queries read."""

from __future__ import annotations

import numpy as np
from prometheus_client import CollectorRegistry, generate_latest

from smoelib.instrument import SERIES, ExpertMetrics, PipelineMetrics
from smoelib.settings import load_settings
from smoelib.sim.env import SimEnv
from smoelib.sim.exporter import SimCollector, snapshot
from smoelib.sim.telemetry import CALL_BOUNDS_S, PASS_BOUNDS_S, histogram_quantile
from smoelib.topology import build_dag


def test_exporter_serves_smoe_and_kube_state_series():
    dag = build_dag({"name": "small", "slo_ms": 60, "max_seq_tokens": 256,
                     "stages": [{"id": "embed", "kind": "segment"},
                                {"id": "moe", "kind": "moe", "experts": 2, "top_k": 1}]})
    env = SimEnv(dag, load_settings(None), trace="poisson", duration_s=20)
    env.reset(seed=0)
    for _ in range(4):
        env.step(None)
    registry = CollectorRegistry(auto_describe=False)
    collector = SimCollector(dag)
    registry.register(collector)
    assert generate_latest(registry) == b""
    collector.publish(snapshot(env))
    text = generate_latest(registry).decode()
    for name in SERIES.values():
        assert name in text
    assert 'smoe_expert_calls_total{expert="moe/e0",pipeline="small"}' in text
    assert 'kube_deployment_spec_replicas{deployment="small-moe-e0",namespace="openfaas-fn"} 1.0' \
        in text
    assert "smoe_pipeline_latency_seconds_bucket" in text
    # the simulator's histograms have the instrument helper's buckets: one metrics contract
    router = CollectorRegistry()
    PipelineMetrics("small", registry=router).request(0.01, ttft_s=0.005, tpot_s=0.001)
    with ExpertMetrics("small", registry=router).call("moe/e0", tokens=1):
        pass
    served = generate_latest(router).decode()
    for series in ("smoe_expert_latency_seconds_bucket", "smoe_pipeline_latency_seconds_bucket",
                   "smoe_pipeline_ttft_seconds_bucket", "smoe_pipeline_tpot_seconds_bucket"):
        assert _bounds(text, series) == _bounds(served, series), series


def _bounds(text: str, series: str) -> list[str]:
    """The ``le`` labels of ``series``' first histogram in an exposition, in order."""
    import re

    out: list[str] = []
    for line in text.splitlines():
        if line.startswith(series + "{"):
            le = re.search(r'le="([^"]+)"', line).group(1)
            if le in out:
                break
            out.append(le)
    return [str(float(x)) if x != "+Inf" else x for x in out]


def test_a_pass_quantile_resolves_the_slo_band():
    """A TPOT of 31 ms reads as about 31 ms, not as the 49 ms (0.98 of a 50 ms SLO) of the
    call buckets, where it falls inside (30 ms, 50 ms] and would hold scale-down forever."""
    lat = np.full(1000, 0.031)
    for bounds, low, high in ((PASS_BOUNDS_S, 0.030, 0.031 * 1.14),
                              (CALL_BOUNDS_S, 0.049, 0.049)):
        counts = np.bincount(np.searchsorted(bounds, lat), minlength=bounds.size)
        p95 = float(histogram_quantile(0.95, counts, bounds))
        assert low - 1e-9 <= p95 <= high + 1e-9, (bounds.size, p95)
    assert (PASS_BOUNDS_S[1:-1] / PASS_BOUNDS_S[:-2]).max() < 1.14
