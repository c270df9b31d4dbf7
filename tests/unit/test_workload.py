"""The realistic workload: the passes of a request, calls per pass, routing per token, drops
with infinite latency, and replayed traces that keep their statistics."""

from __future__ import annotations

import math

import numpy as np
import pytest

from smoelib.core import work
from smoelib.errors import ConfigError
from smoelib.settings import load_settings
from smoelib.sim.env import SimEnv
from smoelib.sim.routing import RoutingModel, RoutingParams, touched_share
from smoelib.sim.summary import summarise
from smoelib.sim.traces import load_trace
from smoelib.topology import build_dag


def decoder(**over):
    """embed -> one MoE layer of 2 experts (top-2: every token hits both) -> head."""
    seg = {"replicas": {"min": 1, "max": 1}, "concurrency": 64, "gpu_share": 0.0,
           "profile": {"base_ms": 1.0, "per_token_ms": 0.0}}
    return build_dag({
        "name": "d", "kind": "decoder", "slo": {"ttft_ms": 50, "tpot_ms": 20},
        "max_seq_tokens": 64, "decode_cap": 8, **over,
        "defaults": {"segment": seg, "expert": {**seg, "replicas": {"min": 1, "max": 1}}},
        "stages": [{"id": "embed"}, {"id": "moe", "kind": "moe", "experts": 2, "top_k": 2},
                   {"id": "head"}]})


def trace_csv(tmp_path, rows):
    path = tmp_path / "t.csv"
    path.write_text("TIMESTAMP,ContextTokens,GeneratedTokens\n" + "".join(
        f"2024-01-01 00:00:{s:02d}.000000,{c},{g}\n" for s, c, g in rows))
    return str(path)


def run(dag, trace, *, duration=20.0, **simulator):
    env = SimEnv(dag, load_settings({"simulator": simulator}), trace=trace,
                 duration_s=duration, rate_scale=1.0)
    env.reset(seed=2)
    done = False
    while not done:
        done = env.step(None).done
    return env


def test_passes_follow_the_clipping_rules():
    dag = decoder()  # max_seq 64, decode cap 8
    c, g = np.array([10, 100, 10, 60]), np.array([5, 5, 40, 0])
    assert work.prefill_tokens(dag, c, g).tolist() == [10, 59, 10, 60]
    assert work.decode_passes(dag, c, g).tolist() == [5, 5, 8, 0]
    chunked = decoder(prefill_chunk=16)
    assert work.chunks(chunked, 59) == [16, 16, 16, 11]
    assert work.passes_per_request(chunked, c, g).tolist() == [1 + 5, 4 + 5, 1 + 8, 4]


def test_the_number_of_simulated_calls_matches_its_analytic_count(tmp_path):
    # per pass: embed + 2 experts (top-2 of 2) + head = 4 calls; passes = chunks + decode
    rows = [(0, 10, 5), (1, 100, 5), (2, 10, 40), (3, 60, 0)]
    for over, passes in (({}, [6, 6, 9, 1]), ({"prefill_chunk": 16}, [6, 9, 9, 4])):
        env = run(decoder(**over), trace_csv(tmp_path, rows), duration=4.0)
        assert len(env.trace) == 4 and env.server.rejected == 0 and not env.server.dropped.any()
        assert env.server.calls == 4 * sum(passes)
        assert summarise(env).calls == 4 * sum(passes)


def test_ttft_is_the_prefill_and_tpot_the_mean_time_per_token_after_it(tmp_path):
    # no noise, no RPC, no handler: every call 1 ms, a pass 3 stages = 3 ms
    dag = decoder()
    env = run(dag, trace_csv(tmp_path, [(0, 10, 5)]), duration=1.0, service_cv=0.0,
              rpc_overhead_ms=0.0,
              handler_ms=0.0, serialise_ms_per_kb=0.0)
    assert env.server.ttft[0] == pytest.approx(0.003)
    assert env.server.tpot[0] == pytest.approx(0.003)
    assert env.server.e2e[0] == pytest.approx(0.003 * 6)


def test_a_dropped_request_has_infinite_latency_and_raises_every_percentile(tmp_path):
    dag = decoder()
    rows = [(s // 4, 30, 8) for s in range(40)]  # 4 requests a second at one slow replica
    calm = run(dag, trace_csv(tmp_path, rows[:1]), duration=1.0)
    busy = run(build_dag({**dag.to_config(), "defaults": {}, "stages": [
        {**st, "concurrency": 1, "profile": {"base_ms": 400.0, "per_token_ms": 0.0}}
        if st["kind"] == "segment" else st for st in dag.to_config()["stages"]]}),
        trace_csv(tmp_path, rows), duration=10.0, max_retries=0)
    s = summarise(busy)
    assert s.dropped > 0.05 * s.requests
    assert math.isinf(s.ttft_p95_ms) and math.isinf(s.tpot_p99_ms)
    assert s.slo_attainment <= 1 - s.dropped / s.requests
    assert summarise(calm).slo_attainment == 1.0


def test_a_decoder_needs_generated_tokens(tmp_path):
    path = tmp_path / "ctx.csv"
    path.write_text("TIMESTAMP,ContextTokens\n2024-01-01 00:00:00.000000,10\n")
    env = SimEnv(decoder(), load_settings(None), trace=str(path), duration_s=5)
    with pytest.raises(ConfigError, match="no GeneratedTokens column"):
        env.reset(seed=0)


def test_the_touched_expert_share_per_step_is_one_minus_one_minus_k_over_e_to_the_n():
    for experts, k in ((8, 2), (256, 8)):
        router = RoutingModel([experts], [k], max_tokens=512,
                              params=RoutingParams(gini=0.0, shift_every_s=0.0),
                              seed=np.random.SeedSequence(1))
        rng = np.random.default_rng(0)
        for n in (1, 8, 32):
            steps = [np.unique(router.decode(rng, n, 0.0)[0]).size / experts
                     for _ in range(400)]
            assert np.mean(steps) == pytest.approx(float(touched_share(n, k, experts)),
                                                   abs=0.02)


def test_step_batched_invocation_carries_a_steps_tokens_in_one_call_per_expert(tmp_path):
    rows = [(0, 10, 5)] * 6  # six sequences arrive together
    per_seq = run(decoder(), trace_csv(tmp_path, rows), duration=1.0)
    stepped = run(decoder(), trace_csv(tmp_path, rows), duration=1.0,
                  invocation="step-batched")
    assert not stepped.server.dropped.any() and np.isfinite(stepped.server.e2e).all()
    # lock-step: one step per decode token for all six, one call per stage and expert
    assert stepped.server.calls < per_seq.server.calls / 3


def test_a_replayed_trace_keeps_its_rate_and_token_statistics():
    conv = load_trace("conv", seed=0, duration_s=3480.0)
    assert len(conv) / 3480.0 == pytest.approx(5.53, rel=0.02)
    assert conv.tokens.mean() == pytest.approx(1155, rel=0.02)
    assert np.median(conv.generated) == pytest.approx(129, rel=0.05)
    assert conv.generated.mean() == pytest.approx(211, rel=0.02)
    assert conv.rate_cv() == pytest.approx(1.09, rel=0.1)
    double = load_trace("conv", seed=0, duration_s=3480.0, rate_scale=2.0)
    assert len(double) == pytest.approx(2 * len(conv), rel=0.02)
    assert double.generated.mean() == pytest.approx(conv.generated.mean(), rel=0.02)


def test_a_scaled_replay_arrives_as_more_independent_users_not_in_clusters():
    conv = load_trace("conv", seed=0, duration_s=600.0)
    many = load_trace("conv", seed=0, duration_s=600.0, rate_scale=30.0)
    cv = lambda t: float(np.std(np.diff(t.times_s)) / np.mean(np.diff(t.times_s)))  # noqa: E731
    # copies clustered inside the original's inter-arrival gaps gave CV 1.7 at 30x
    assert cv(many) == pytest.approx(cv(conv), rel=0.1)
    # the rate over minutes is still the trace's
    minute = lambda t: np.histogram(t.times_s, bins=10, range=(0, 600))[0]  # noqa: E731
    assert np.corrcoef(minute(conv), minute(many))[0, 1] > 0.8


@pytest.mark.parametrize("family", ["poisson", "bursty", "diurnal", "weekly", "spike", "onoff"])
def test_synthetic_families_keep_their_mean_rate_and_move_the_task_mix(family):
    from smoelib.sim.traces import task_mix

    # weekly: a whole compressed week; the others an hour
    duration = 7 * 1800.0 if family == "weekly" else 3600.0
    t = load_trace(family, seed=3, duration_s=duration, rate_per_s=5.0)
    assert len(t) / duration == pytest.approx(5.0, rel=0.35 if family == "onoff" else 0.12)
    assert t.generated is not None and t.task is not None
    if family == "onoff":
        assert t.rate_cv() >= 10  # idle minutes, then bursts far above the mean
    shares = task_mix(np.array([0.0, 600.0, 1200.0]), 1800.0)
    assert set(shares.argmax(axis=1)) == {0, 1, 2}  # a different class leads each third
    hours = np.bincount(t.task[t.times_s < 600], minlength=3) / max((t.times_s < 600).sum(), 1)
    later = t.task[(t.times_s >= 600) & (t.times_s < 1200)]
    assert not np.allclose(hours, np.bincount(later, minlength=3) / max(later.size, 1),
                           atol=0.05)


def test_token_mixes_follow_their_published_medians():
    code = load_trace("poisson:code", seed=1, duration_s=1200.0, rate_per_s=5.0)
    agent = load_trace("poisson:agent", seed=1, duration_s=1200.0, rate_per_s=5.0)
    assert np.median(code.generated) == pytest.approx(13, rel=0.15)  # tens of tokens
    assert np.median(code.tokens) == pytest.approx(1500, rel=0.1)
    assert np.median(agent.tokens) == pytest.approx(10000, rel=0.1)  # long contexts
    with pytest.raises(ConfigError, match="unknown token mix 'essay'"):
        load_trace("poisson:essay", seed=1, duration_s=10.0)
