"""Traces, routing, decisions and observations: bad input, calibration, determinism."""

from __future__ import annotations

import math
from types import MappingProxyType

import numpy as np
import pytest

from smoelib.core.decisions import ExpertDecision, PipelineDecision
from smoelib.errors import ConfigError
from smoelib.policy.baselines.common import with_overrides
from smoelib.settings import load_settings
from smoelib.sim.env import SimEnv
from smoelib.sim.routing import RoutingModel, RoutingParams, gini
from smoelib.sim.traces import load_trace, read_trace_csv
from smoelib.topology import build_dag

HEADER = "TIMESTAMP,ContextTokens,GeneratedTokens\n"
ROW = "2024-01-01 00:00:0{s}.0000000,{tok},5\n"


@pytest.mark.parametrize("body, where", [
    ("", "empty trace"),
    (HEADER, "no requests"),
    (HEADER + ROW.format(s=2, tok=10) + ROW.format(s=1, tok=10), "row 2"),
    (HEADER + "yesterday,10,5\n", "row 1"),
    (HEADER + ROW.format(s=1, tok=-3), "row 1"),
    (HEADER + ROW.format(s=1, tok="ten"), "row 1"),
    ("time,tokens\n1,2\n", "header"),
])
def test_bad_traces_name_the_file_and_row(tmp_path, body, where):
    path = tmp_path / "t.csv"
    path.write_text(body)
    with pytest.raises(ConfigError) as e:
        read_trace_csv(path)
    assert str(path) in str(e.value) and where in str(e.value)


def test_missing_trace_file(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_trace(str(tmp_path / "nope.csv"), seed=0, duration_s=10)


def test_builtin_traces():
    train = load_trace("conv-train", seed=0, duration_s=2400)
    ev = load_trace("conv-eval", seed=0, duration_s=1000)
    assert 13_000 < len(train) < 15_000 and train.times_s.max() < 2400
    assert len(ev) > 4000 and np.all(np.diff(ev.times_s) >= 0)
    bursty = load_trace("bursty", seed=1000, duration_s=3600)
    assert bursty.rate_cv() > 1.5
    for name in ("poisson", "diurnal", "spike"):
        a = load_trace(name, seed=3, duration_s=600)
        b = load_trace(name, seed=3, duration_s=600)
        assert np.array_equal(a.times_s, b.times_s) and len(a) > 1000


def test_routing_gini_is_calibrated_and_counts_are_consistent():
    m = RoutingModel([8, 8, 16], [2, 2, 4], max_tokens=512,
                     params=RoutingParams(gini=0.3, affinity=0.3),
                     seed=np.random.SeedSequence(4))
    assert gini(m.popularity(0.0)[:2, :8]) == pytest.approx([0.3, 0.3], abs=1e-6)
    times = np.arange(600.0)
    tokens = np.full(600, 1000)
    counts = m.counts(0, 600, times, tokens)
    assert counts[0].shape == (600, 8) and counts[2].shape == (600, 16)
    assert (counts[0].sum(1) <= 512 * 2).all() and (counts[0] <= 512).all()
    again = RoutingModel([8, 8, 16], [2, 2, 4], max_tokens=512,
                         params=RoutingParams(gini=0.3, affinity=0.3),
                         seed=np.random.SeedSequence(4))
    assert np.array_equal(again.counts(300, 400, times, tokens)[1], counts[1][300:400])


def _dag():
    return build_dag({"name": "small", "slo_ms": 60, "max_seq_tokens": 256,
                      "defaults": {"expert": {"replicas": {"min": 0, "max": 4}}},
                      "stages": [{"id": "embed", "kind": "segment"},
                                 {"id": "moe", "kind": "moe", "experts": 4, "top_k": 2}]})


def _decision(dag, experts=None, **knobs):
    base = dict(replicas=2, cpu=1.0, memory_mb=2048, gpu_share=0.25, concurrency=4)
    base.update(knobs)
    names = experts or dag.experts
    return PipelineDecision(dag.name, 0.0, MappingProxyType(
        {n: ExpertDecision(**base) for n in names}))


@pytest.mark.parametrize("decision, where", [
    (lambda d: _decision(d, experts=["moe/e9"]), "experts.moe/e9"),
    (lambda d: _decision(d, experts=["embed"]), "experts.embed"),
    (lambda d: _decision(d, cpu=math.nan), "experts.moe/e0.cpu"),
    (lambda d: _decision(d, replicas=9), "experts.moe/e0.replicas"),
    (lambda d: _decision(d, gpu_share=1.5), "experts.moe/e0.gpu_share"),
    (lambda d: _decision(d, concurrency=1000), "experts.moe/e0.concurrency"),
])
def test_bad_decisions_name_the_expert_and_field(decision, where):
    dag = _dag()
    env = SimEnv(dag, load_settings(None), trace="poisson", duration_s=30)
    env.reset(seed=0)
    with pytest.raises(ConfigError) as e:
        env.step(decision(dag))
    assert where in str(e.value)


def _run(dag, decisions, seed, settings=None):
    env = SimEnv(dag, settings or load_settings(None), trace="bursty", duration_s=120)
    obs = env.reset(seed=seed)
    out = []
    for d in decisions:
        r = env.step(d)
        obs = r.observation.validate()
        out.append((r.reward.cost, r.reward.slo_ratio, r.reward.violations, obs.calls_per_s.sum()))
    return env, out


def test_one_seed_one_trajectory_and_common_random_numbers():
    dag = _dag()
    ds = [_decision(dag, replicas=1 + (i % 3)) for i in range(24)]
    a, ta = _run(dag, ds, seed=7)
    b, tb = _run(dag, ds, seed=7)
    assert np.array_equal(np.array(ta), np.array(tb), equal_nan=True)
    c, _ = _run(dag, [_decision(dag, replicas=4)] * 24, seed=7)
    assert np.array_equal(a.trace.times_s, c.trace.times_s)
    for r in (0, 7, 30):  # same routing for every policy: each request's own stream
        ra, rc = a.server.router, c.server.router
        t = float(a.trace.times_s[r])
        for x, y in zip(ra.chunk(ra.rng_for(r), 200, t), rc.chunk(rc.rng_for(r), 200, t),
                        strict=True):
            assert np.array_equal(x, y)
    d, _ = _run(dag, ds, seed=8)
    assert not np.array_equal(a.trace.times_s[:50], d.trace.times_s[:50])


def test_a_noise_stream_redraws_the_engines_own_randomness_only():
    """``simulator.noise_stream``: the seed's arrivals and popularity path, other picks and
    service draws (the noise floor of docs/simulator.md's agreement); 0 is the seed's own."""
    dag = _dag()
    ds = [_decision(dag, replicas=1 + (i % 3)) for i in range(24)]
    a, ta = _run(dag, ds, seed=7)
    base = load_settings(None)
    _, tz = _run(dag, ds, seed=7, settings=with_overrides(base, {"simulator.noise_stream": 0}))
    assert np.array_equal(np.array(ta), np.array(tz), equal_nan=True)
    b, tb = _run(dag, ds, seed=7, settings=with_overrides(base, {"simulator.noise_stream": 3}))
    assert np.array_equal(a.trace.times_s, b.trace.times_s)
    for t in (0.0, 40.0, 110.0):
        assert np.array_equal(a.server.router.popularity(t), b.server.router.popularity(t))
    ra, rb = a.server.router, b.server.router
    assert not np.array_equal(np.concatenate(ra.chunk(ra.rng_for(0), 200, 0.0)),
                              np.concatenate(rb.chunk(rb.rng_for(0), 200, 0.0)))
    costs = np.array(ta)[:, 0], np.array(tb)[:, 0]
    assert not np.array_equal(np.array(ta), np.array(tb), equal_nan=True)
    assert np.allclose(costs[0], costs[1], rtol=0.1)  # the same cluster, other draws


def test_observation_carries_the_controller_fields_and_refuses_nan():
    dag = _dag()
    env = SimEnv(dag, load_settings(None), trace="poisson", duration_s=60)
    env.reset(seed=1)
    for _ in range(6):
        obs = env.step(_decision(dag)).observation
    obs.validate()
    e0 = obs.node("moe/e0")
    assert e0["replicas_desired"] == 2 and e0["calls_per_s"] > 0 and e0["gpu_share"] == 0.25
    assert obs.request_rate > 0 and obs.p95_ms > 0 and obs.time_s == 30.0
    bad = type(obs)(**{**obs.__dict__, "calls_per_s": np.full(len(obs.nodes), np.nan)})
    with pytest.raises(ValueError, match="calls_per_s"):
        bad.validate()


def test_an_expert_a_decision_omits_keeps_its_replica_target_on_the_simulator():
    """A decision file without an expert has no decision for it (never 0): the simulated
    KEDA path keeps that expert's last target, as the scaler keeps serving its last one."""
    from smoelib.sim.actuator import SimActuator

    dag = _dag()
    settings = load_settings(None)
    env = SimEnv(dag, settings, trace="poisson", duration_s=30)
    env.reset(seed=0)
    actuator = SimActuator(env, settings)
    actuator.apply(_decision(dag, replicas=3), now=0.0)
    actuator.apply(_decision(dag, experts=dag.experts[1:], replicas=1), now=5.0)
    assert actuator.replicas == {dag.experts[0]: 3, **{n: 1 for n in dag.experts[1:]}}
    actuator.step()  # the omitted expert is simulated at its kept target
