"""The simulator's exporter emits the series the controller's queries read."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, generate_latest

from smoelib.instrument import SERIES
from smoelib.settings import load_settings
from smoelib.sim.env import SimEnv
from smoelib.sim.exporter import SimCollector, snapshot
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
