"""Fidelity: the request-level engine against M/M/c/K and random spreading (replicas that do
not batch), and batching against its capacity."""

from __future__ import annotations

import numpy as np
import pytest

from smoelib.policy.baselines.mmck import mmck
from smoelib.settings import load_settings
from smoelib.sim.env import SimEnv
from smoelib.topology import build_dag

pytestmark = pytest.mark.heavy  # minutes of simulated traffic: the lowest-bounds run skips it


def one_queue(*, service_ms: float, parallelism: int = 1, concurrency: int = 4,
              replicas: int = 1, max_batch: int = 1):
    """A pipeline of one segment: every request is one call of ``service_ms`` (no handler
    cost, one core per worker), fixed replicas."""
    return build_dag({
        "name": "q", "slo_ms": 100, "max_seq_tokens": 512,
        "defaults": {"segment": {
            "cpu": float(parallelism), "memory_mb": 2048, "gpu_share": 0.0,
            "concurrency": concurrency, "parallelism": parallelism, "max_batch": max_batch,
            "replicas": {"min": replicas, "max": replicas}, "weights_mb": 10,
            "handler": {"call_ms": 0.0, "serialise_ms_per_kb": 0.0},
            "profile": {"base_ms": service_ms, "per_token_ms": 0.0}}},
        "stages": [{"id": "svc", "kind": "segment"}]})


def sim_settings(**simulator):
    return load_settings({"simulator": simulator})


def run_queue(*, lam: float, service_ms: float, c: int, k: int, replicas: int = 1,
              duration: float = 1500.0, seed: int = 3, max_batch: int = 1, cv: float = 1.0):
    dag = one_queue(service_ms=service_ms, parallelism=c, concurrency=k, replicas=replicas,
                    max_batch=max_batch)
    settings = sim_settings(synthetic_rate_per_s=lam, service_cv=cv, rpc_overhead_ms=0.0,
                            max_retries=0)
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


def test_a_batching_replica_serves_beyond_one_call_at_a_time():
    """A replica whose batch time does not grow with its calls (flat, bandwidth-bound) takes
    every waiting call at once: at 2.5x the load one call at a time can carry it keeps up
    (next to nothing refused), while the same replica without batching refuses most calls."""
    lam, service_ms = 250.0, 10.0  # offered 2.5 call-times per second of one worker
    batched, _, n = run_queue(lam=lam, service_ms=service_ms, c=1, k=16, max_batch=0,
                              duration=300.0, cv=0.0)
    single, _, _ = run_queue(lam=lam, service_ms=service_ms, c=1, k=16, max_batch=1,
                             duration=300.0, cv=0.0)
    assert n > 60_000
    assert batched < 1e-3  # only bursts of more than 16 calls inside one 10 ms batch
    assert single > 0.5
