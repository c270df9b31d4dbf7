"""hpa, hpa-stock, kpa and openfaas against hand-computed decisions."""

from __future__ import annotations

import dataclasses

import numpy as np

from smoelib.core.observation import NODE_FIELDS, Observation
from smoelib.policy.base import get_decider
from smoelib.settings import Settings
from tests.unit.tiny_pipeline import tiny_dag


def observation(dag, t: float, **per_expert) -> Observation:
    """An observation at ``t`` with zeros except the given per-expert values (lists in
    ``dag.experts`` order); replicas_ready defaults to 1."""
    n = len(dag.nodes)
    pos = [list(dag.nodes).index(e) for e in dag.experts]
    arrays = {f: np.zeros(n) for f in NODE_FIELDS}
    arrays["replicas_ready"] = np.ones(n)
    arrays["latency_p50_ms"] = np.full(n, np.nan)
    arrays["latency_p95_ms"] = np.full(n, np.nan)
    for name, values in per_expert.items():
        arrays[name][pos] = values
    return Observation(time_s=t, nodes=tuple(dag.nodes), request_rate=1.0, p95_ms=10.0,
                       p99_ms=12.0, **arrays)



def settings_with(**baselines) -> Settings:
    s = Settings()
    b = dataclasses.replace(s.baselines, **baselines)
    return dataclasses.replace(s, baselines=b)


def replicas(decision) -> list[int]:
    return [e.replicas for e in decision.experts.values()]


def test_hpa_stock_tolerance_band(tmp_path):
    dag = tiny_dag(tmp_path)
    s = settings_with(hpa_stock=dataclasses.replace(Settings().baselines.hpa_stock,
                                                    metric="rps", target=1.0))
    d = get_decider("hpa-stock", dag=dag, settings=s)
    d.reset(0)
    d.hpa.replicas = np.array([10, 10])  # as if scaled to 10 earlier
    # ratio 10.5 / 10 = 1.05 is inside the 10 % band: keep 10; 11.5 / 10 = 1.15: ceil -> 12
    dec = d.decide(observation(dag, 15.0, calls_per_s=[10.5, 11.5]))
    assert replicas(dec) == [10, 12]
    # a scale-down proposal waits for the 300 s window: 3 rps -> still 10 and 12
    assert replicas(d.decide(observation(dag, 30.0, calls_per_s=[3.0, 3.0]))) == [10, 12]


def test_hpa_with_smoe_behaviour_follows_exactly(tmp_path):
    dag = tiny_dag(tmp_path)
    s = settings_with(hpa=dataclasses.replace(Settings().baselines.hpa, metric="rps",
                                              target=1.0))
    d = get_decider("hpa", dag=dag, settings=s)
    d.reset(0)
    d.hpa.replicas = np.array([10, 10])
    assert replicas(d.decide(observation(dag, 15.0, calls_per_s=[10.5, 3.0]))) == [11, 3]
    # off the sync grid nothing changes
    assert replicas(d.decide(observation(dag, 20.0, calls_per_s=[1.0, 1.0]))) == [11, 3]
    assert d.simulator_overrides["simulator.hpa_preset"] == "smoe"


KPA = settings_with(kpa=dataclasses.replace(Settings().baselines.kpa, target=4.0,
                                           utilization=0.7))
OPENFAAS = settings_with(openfaas=dataclasses.replace(Settings().baselines.openfaas, target=4.0,
                                                     mode="capacity"))


def test_kpa_panic_entry_and_exit(tmp_path):
    dag = tiny_dag(tmp_path)
    d = get_decider("kpa", dag=dag, settings=KPA)
    d.reset(0)
    # target 4 x 0.7 = 2.8 per pod. Panic value 6 -> ceil(6 / 2.8) = 3 pods >= 2 x 1 ready
    r = d.kpa_step(0.0, np.array([1.0, 1.0]), np.array([6.0, 1.0]), np.array([1, 1]))
    assert r.tolist() == [3, 1] and d.panicking.tolist() == [True, False]
    # load falls: in panic the count never drops, until a stable window (60 s) after the
    # last over-threshold tick
    r = d.kpa_step(30.0, np.array([1.0, 1.0]), np.array([1.0, 1.0]), np.array([3, 1]))
    assert r.tolist() == [3, 1] and d.panicking[0]
    r = d.kpa_step(60.0, np.array([1.0, 1.0]), np.array([1.0, 1.0]), np.array([3, 1]))
    assert not d.panicking[0] and r.tolist() == [1, 1]  # stable: ceil(1 / 2.8) = 1


def test_kpa_scale_to_zero_waits_for_the_grace_period(tmp_path):
    dag = tiny_dag(tmp_path)
    d = get_decider("kpa", dag=dag, settings=KPA)
    d.reset(0)
    d.kpa_step(0.0, np.array([1.0, 1.0]), np.array([1.0, 1.0]), np.array([1, 1]))
    zero = np.zeros(2)
    assert d.kpa_step(20.0, zero, zero, np.array([1, 1])).tolist() == [1, 1]
    assert d.kpa_step(30.0, zero, zero, np.array([1, 1])).tolist() == [0, 0]


def test_openfaas_capacity_mode(tmp_path):
    dag = tiny_dag(tmp_path)
    d = get_decider("openfaas", dag=dag, settings=OPENFAAS)
    d.reset(0)
    # in flight by Little's law: calls/s x P50 (s). 7.2 / (4 x 0.9) = 2; 7.3 -> 3
    obs = observation(dag, 5.0, calls_per_s=[720.0, 730.0], latency_p50_ms=[10.0, 10.0])
    assert replicas(d.decide(obs)) == [2, 3]
    v = Settings().baselines.openfaas.vertical
    e = next(iter(d.decide(obs).experts.values()))
    assert (e.gpu_share, e.cpu, e.memory_mb, e.concurrency) == (v.gpu_share, v.cpu,
                                                                v.memory_mb, v.concurrency)
