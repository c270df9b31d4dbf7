"""The compiled engine computes what the reference engine computes, for the same seed, to the
last request: every request's TTFT, TPOT and end, which were dropped, the calls, batches and
429s, and the telemetry the controller reads."""

from __future__ import annotations

import numpy as np
import pytest

from smoelib.settings import load_settings
from smoelib.sim.compiled import CompiledEngine
from smoelib.sim.engine import Engine
from smoelib.sim.env import SimEnv
from smoelib.topology import build_dag


def serve(dag, engine, *, trace="conv", duration=20.0, rate_scale=None, decision=None,
          **simulator):
    env = SimEnv(dag, load_settings({"simulator": {"engine": engine, **simulator}}),
                 trace=trace, duration_s=duration, rate_scale=rate_scale)
    env.reset(seed=5)
    done = False
    while not done:
        done = env.step(decision).done
    return env


def assert_same(dag, **kw):
    a, b = serve(dag, "compiled", **kw), serve(dag, "reference", **kw)
    assert type(a.server) is CompiledEngine and type(b.server) is Engine
    for name in ("ttft", "tpot", "e2e"):
        np.testing.assert_array_equal(getattr(a.server, name), getattr(b.server, name))
    np.testing.assert_array_equal(a.server.dropped, b.server.dropped)
    for name in ("calls", "batches", "rejected", "retries"):
        assert getattr(a.server, name) == getattr(b.server, name), name
    for name in ("calls", "tokens", "rejected", "batches", "slo_met", "slo_total", "dropped",
                 "ttft_hist", "tpot_hist", "lat_hist"):
        np.testing.assert_array_equal(a.tel.totals[name], b.tel.totals[name], err_msg=name)
    np.testing.assert_allclose(a.tel.totals["busy_s"], b.tel.totals["busy_s"], rtol=1e-9)
    assert a.cost == pytest.approx(b.cost, rel=1e-12)
    return a, b


def tiny(**over):
    """embed -> 4 experts (top-2) -> head, one replica each: easy to overload."""
    seg = {"replicas": {"min": 1, "max": 1}, "concurrency": 2, "gpu_share": 0.25,
           "profile": {"base_ms": 1.0, "per_token_ms": 0.01}}
    return build_dag({
        "name": "t", "kind": "decoder", "slo": {"ttft_ms": 100, "tpot_ms": 20},
        "max_seq_tokens": 4096, "decode_cap": 16, **over,
        "defaults": {"segment": seg, "expert": {**seg, "profile": {
            "tokens": [1, 64, 512], "ms": [0.4, 0.6, 2.5]}}},
        "stages": [{"id": "embed"}, {"id": "moe", "kind": "moe", "experts": 4, "top_k": 2},
                   {"id": "head"}]})


def test_gpt2_moe_on_conv_is_the_same_to_the_last_request():
    a, _ = assert_same(build_dag("examples/pipelines/gpt2-moe.yml"), duration=30.0)
    assert a.server.calls > 100_000 and np.isfinite(a.server.tpot).sum() > 50


def test_429s_retries_and_drops_are_the_same():
    a, _ = assert_same(tiny(), rate_scale=3.0, duration=30.0, max_retries=2)
    assert a.server.rejected > 100 and a.server.dropped.sum() > 5


def test_chunked_prefill_and_an_encoder_decoder_are_the_same():
    assert_same(tiny(prefill_chunk=256), rate_scale=0.5, duration=20.0)
    assert_same(build_dag("examples/pipelines/bert2bert-moe.yml"), duration=15.0)


def test_step_batched_invocation_runs_on_the_reference_engine():
    env = serve(tiny(), "compiled", duration=5.0, invocation="step-batched")
    assert type(env.server) is Engine and env.server.calls > 0


def test_every_array_grows_and_routes_compact_without_changing_a_result(monkeypatch):
    # tiny first sizes: the heap, call pool, pass slots, request log and route arrays all
    # grow during the run, and the finished requests' routes are compacted away many times
    for name, value in (("START", 8), ("SLOTS", 2), ("LOG", 4), ("COMPACT_AT", 64)):
        monkeypatch.setattr(CompiledEngine, name, value)
    assert_same(tiny(prefill_chunk=128), rate_scale=2.0, duration=15.0, max_retries=3)
