"""The scaling path on hand-made cases: HPA maths, KEDA activation, cold starts, 429 retries,
rollouts."""

from __future__ import annotations

import math
from types import MappingProxyType

import numpy as np
import pytest

from smoelib.core.decisions import ExpertDecision, PipelineDecision
from smoelib.settings import load_settings
from smoelib.sim.autoscaling import Autoscaler, HpaBehaviour
from smoelib.sim.cluster import Cluster
from smoelib.sim.env import SimEnv
from smoelib.topology import build_dag


def hpa(initial, *, tol=0.1, window=300.0, pods=4, percent=100.0, cooldown=300.0, mn=0, mx=100):
    b = HpaBehaviour(tolerance=tol, scale_up_pods=pods, scale_up_percent=percent,
                     scale_down_window_s=window, cooldown_s=cooldown)
    return Autoscaler(np.array([mn]), np.array([mx]), behaviour=b, initial=np.array([initial]))


def one_segment(*, concurrency: int, max_replicas: int, batch_ms: float):
    """One CPU segment whose batch costs ``batch_ms`` whatever it carries."""
    return build_dag({"name": "q", "slo_ms": 100, "max_seq_tokens": 512,
                      "defaults": {"segment": {
                          "concurrency": concurrency,
                          "replicas": {"min": 1, "max": max_replicas}, "gpu_share": 0.0,
                          "handler": {"call_ms": 0, "serialise_ms_per_kb": 0},
                          "profile": {"base_ms": batch_ms, "per_token_ms": 0}}},
                      "stages": [{"id": "svc", "kind": "segment"}]})


@pytest.mark.parametrize("current, want_up", [(5, 6), (10, 12), (20, 23), (50, 56)])
def test_default_tolerance_deadband_matches_the_kubernetes_table(current, want_up):
    # keda.md 3.4: the smallest reachable scale-up from C with "metric = desired, target 1"
    for n in range(current + 1, 2 * current + 2):
        a = hpa(current, percent=1000.0, pods=1000)
        if a.sync(0.0, np.array([float(n)]))[0] != current:
            assert n == want_up
            return
    pytest.fail("never scaled up")


def test_zero_tolerance_reaches_every_count():
    a = hpa(10, tol=0.0, window=0.0)
    assert a.sync(0.0, np.array([11.0]))[0] == 11
    assert a.sync(15.0, np.array([10.0]))[0] == 10


def test_scale_up_is_capped_by_pods_or_percent_per_period():
    a = hpa(1)
    assert a.sync(0.0, np.array([40.0]))[0] == 5       # max(1 + 4, 2 x 1)
    assert a.sync(15.0, np.array([40.0]))[0] == 10     # max(5 + 4, 2 x 5)
    assert a.sync(30.0, np.array([40.0]))[0] == 20


def test_scale_down_waits_for_the_stabilisation_window():
    a = hpa(8, tol=0.0, window=300.0)
    for t in range(0, 300, 15):
        assert a.sync(float(t), np.array([2.0]))[0] == 8
    assert a.sync(315.0, np.array([2.0]))[0] == 2


def test_keda_activation_and_cooldown_to_zero():
    a = hpa(0, cooldown=30.0)
    assert a.poll(0.0, np.array([3.0]))[0] == 1        # 0 -> 1 at once, the HPA does the rest
    assert a.sync(15.0, np.array([3.0]))[0] == 3
    assert a.poll(20.0, np.array([0.0]))[0] == 3       # inactive, cooldown not over
    assert a.poll(29.0, np.array([0.0]))[0] == 3
    assert a.poll(30.0, np.array([0.0]))[0] == 0       # cooldown after the last active poll


def _one_expert(replicas_min=0):
    return build_dag({"name": "one", "slo_ms": 100, "max_seq_tokens": 64,
                      "defaults": {"expert": {"weights_mb": 500, "gpu_share": 0.5,
                                              "replicas": {"min": replicas_min, "max": 4}}},
                      "stages": [{"id": "moe", "kind": "moe", "experts": 1, "top_k": 1}]})


def test_cold_start_is_container_start_plus_weight_loading_and_is_billed():
    s = load_settings({"simulator": {"cold_start_median_s": 2.0, "cold_start_sigma": 0.0,
                                     "weights_load_mb_per_s": 250.0}})
    cl = Cluster(1, np.array([500.0]), settings=s, rng=np.random.default_rng(0))
    (pid,) = cl.create(0, 10.0, 1, cpu=1.0, mem=1024.0, share=0.5, conc=4)
    assert cl.cols["ready"][pid] == pytest.approx(10.0 + 2.0 + 2.0)
    assert cl.cold_starts == 1
    assert cl.counts(12.0, 1)["starting"][0] == 1
    per_s = (1.0 * s.prices.cpu_core_hour + 1.0 * s.prices.memory_gib_hour
             + 0.5 * s.prices.gpu_hour) / 3600
    assert cl.cost(10.0, 20.0) == pytest.approx(10 * per_s)


def test_pods_stay_pending_when_the_gpus_are_full():
    s = load_settings({"cluster": {"gpus": 1}})
    cl = Cluster(1, np.array([1.0]), settings=s, rng=np.random.default_rng(0))
    cl.create(0, 0.0, 3, cpu=1.0, mem=1024.0, share=0.5, conc=4)
    assert cl.counts(0.0, 1)["pending"][0] == 1
    cl.terminate(0, 5.0, 1)                          # a pending pod goes first
    assert cl.counts(5.0, 1)["pending"][0] == 0


def decision(dag, **knobs):
    base = dict(replicas=1, cpu=1.0, memory_mb=2048, gpu_share=0.5, concurrency=4)
    base.update(knobs)
    return PipelineDecision(dag.name, 0.0, MappingProxyType(
        {n: ExpertDecision(**base) for n in dag.experts}))


def test_a_gpu_share_change_rolls_pods_without_losing_the_only_replica():
    dag = _one_expert(replicas_min=1)
    s = load_settings({"simulator": {"cold_start_sigma": 0.0, "cold_start_median_s": 3.0}})
    env = SimEnv(dag, s, trace="poisson", duration_s=60.0)
    env.reset(seed=1)
    env.step(decision(dag, gpu_share=0.5))
    assert env.rollouts == 0
    ready = []
    for _ in range(4):
        r = env.step(decision(dag, gpu_share=1.0))
        ready.append(r.observation.replicas_ready[0])
    assert env.rollouts == 1 and env.cluster.replaced == 1
    assert min(ready) >= 1                           # maxUnavailable 0 with one replica
    assert r.observation.gpu_share[0] == 1.0
    assert env.cluster.cold_starts == 1


def test_cpu_changes_in_place_roll_nothing():
    dag = _one_expert(replicas_min=1)
    env = SimEnv(dag, load_settings(None), trace="poisson", duration_s=30.0)
    env.reset(seed=1)
    env.step(decision(dag, cpu=2.0))
    assert env.rollouts == 0 and env.cluster.resized == 1
    off = SimEnv(dag, load_settings({"cluster": {"in_place_resize": False}}), trace="poisson",
                 duration_s=30.0)
    off.reset(seed=1)
    off.step(decision(dag, cpu=2.0))
    assert off.rollouts == 1


def test_429s_are_retried_with_backoff_and_counted(tmp_path):
    dag = one_segment(concurrency=1, max_replicas=1, batch_ms=100)
    csv = tmp_path / "two.csv"
    csv.write_text("TIMESTAMP,ContextTokens,GeneratedTokens\n"
                   "2024-01-01 00:00:00.0000000,10,1\n2024-01-01 00:00:00.0000000,10,1\n")
    s = load_settings({"simulator": {"service_cv": 0.0, "rpc_overhead_ms": 0.0}})
    env = SimEnv(dag, s, trace=str(csv), duration_s=1.0)
    env.reset(seed=0)
    env.step(None)
    lat = env.server.e2e
    assert lat[0] == pytest.approx(0.1)
    assert env.server.rejected >= 1 and env.server.retries == env.server.rejected
    assert not env.server.dropped.any()
    # the retry found the replica free only after the first call finished
    assert lat[1] > 0.2 and math.isfinite(lat[1])


def test_dropped_after_max_retries(tmp_path):
    dag = one_segment(concurrency=1, max_replicas=1, batch_ms=100)
    csv = tmp_path / "two.csv"
    csv.write_text("TIMESTAMP,ContextTokens,GeneratedTokens\n"
                   "2024-01-01 00:00:00.0000000,10,1\n2024-01-01 00:00:00.0000000,10,1\n")
    s = load_settings({"simulator": {"service_cv": 0.0, "max_retries": 0}})
    env = SimEnv(dag, s, trace=str(csv), duration_s=1.0)
    env.reset(seed=0)
    env.step(None)
    assert env.server.dropped.tolist() == [False, True]
    assert env.server.rejected == 1 and env.server.retries == 0


@pytest.mark.parametrize("inflight_target, scales", [(0.5, True), (1.0, False)])
def test_segment_hpa_scales_on_calls_in_flight_when_busy_time_cannot_show_it(
        inflight_target, scales):
    # a batch costs 50 ms whatever it carries: an overloaded replica is busy all the time
    # (busy time at its 1.0 target shows nothing) and holds max_inflight calls
    dag = one_segment(concurrency=8, max_replicas=4, batch_ms=50)
    s = load_settings({"simulator": {"segment_target_utilization": 1.0,
                                     "segment_target_inflight": inflight_target}})
    env = SimEnv(dag, s, trace="poisson", duration_s=35.0, rate_scale=60.0)
    env.reset(seed=0)
    while env.tick * env.dt < 35.0 - 1e-9:
        env.step(None)
    assert (env.hpa_s.replicas[0] > 1) == scales
