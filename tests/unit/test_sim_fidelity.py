"""Fidelity: the request-level core against M/M/c/K, random spreading, and the aggregated mode."""

from __future__ import annotations

import numpy as np
import pytest

from smoelib.policy.baselines.mmck import mmck
from smoelib.settings import load_settings
from smoelib.sim.env import SimEnv
from smoelib.sim.summary import summarise
from smoelib.topology import build_dag


def one_queue(*, service_ms: float, parallelism: int = 1, concurrency: int = 4,
              replicas: int = 1):
    """A pipeline of one segment: every request is one call, fixed replicas."""
    return build_dag({
        "name": "q", "slo_ms": 100, "max_seq_tokens": 512,
        "defaults": {"segment": {
            "cpu": 1.0, "memory_mb": 1024, "gpu_share": 0.0, "concurrency": concurrency,
            "parallelism": parallelism, "replicas": {"min": replicas, "max": replicas},
            "weights_mb": 10, "profile": {"base_ms": service_ms, "per_token_ms": 0.0}}},
        "stages": [{"id": "svc", "kind": "segment"}]})


def sim_settings(**simulator):
    return load_settings({"simulator": simulator})


def run_queue(*, lam: float, service_ms: float, c: int, k: int, replicas: int = 1,
              duration: float = 1500.0, seed: int = 3):
    dag = one_queue(service_ms=service_ms, parallelism=c, concurrency=k, replicas=replicas)
    settings = sim_settings(synthetic_rate_per_s=lam, service_cv=1.0, rpc_overhead_ms=0.0,
                            max_retries=0, mode="request")
    env = SimEnv(dag, settings, trace="poisson", duration_s=duration)
    env.reset(seed=seed)
    done = False
    while not done:
        done = env.step(None).done
    lat = env.server.e2e[~env.server.dropped]
    return env.server.dropped.mean(), float(np.nanmean(lat)), len(env.trace)


@pytest.mark.parametrize("lam, service_ms, c, k", [(80.0, 10.0, 1, 4), (60.0, 30.0, 2, 5)])
def test_one_replica_matches_mmck(lam, service_ms, c, k):
    p_block, mean_resp, n = run_queue(lam=lam, service_ms=service_ms, c=c, k=k)
    want = mmck(lam, 1000.0 / service_ms, c, k)
    assert n > 80_000
    assert p_block == pytest.approx(want.p_block, rel=0.05)
    assert mean_resp == pytest.approx(want.mean_response, rel=0.05)


def test_random_spreading_matches_independent_copies():
    replicas, lam = 3, 150.0
    p_block, mean_resp, _ = run_queue(lam=lam, service_ms=15.0, c=1, k=3, replicas=replicas,
                                      duration=800.0)
    want = mmck(lam / replicas, 1000.0 / 15.0, 1, 3)
    assert p_block == pytest.approx(want.p_block, rel=0.05)
    assert mean_resp == pytest.approx(want.mean_response, rel=0.05)


def test_aggregated_mode_agrees_with_request_level_on_a_mid_size_pipeline():
    dag = build_dag({
        "name": "mid", "slo_ms": 100, "max_seq_tokens": 512,
        "defaults": {"expert": {"replicas": {"min": 1, "max": 4}, "concurrency": 4,
                                "profile": {"base_ms": 1.5, "per_token_ms": 0.004}}},
        "stages": [{"id": "embed", "kind": "segment"}]
        + [s for i in range(6) for s in ({"id": f"attn{i}", "kind": "segment"},
                                         {"id": f"moe{i}", "kind": "moe", "experts": 16,
                                          "top_k": 2})]})
    out = {}
    for mode in ("request", "aggregated"):
        env = SimEnv(dag, sim_settings(mode=mode), trace="conv", duration_s=300.0)
        env.reset(seed=5)
        done = False
        while not done:
            done = env.step(None).done
        out[mode] = summarise(env)
    assert out["aggregated"].p95_ms == pytest.approx(out["request"].p95_ms, rel=0.10)
    assert out["aggregated"].cost == pytest.approx(out["request"].cost, rel=0.10)
