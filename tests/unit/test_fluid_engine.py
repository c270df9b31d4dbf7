"""The fast training mode against the request-level engine where it agrees (docs/simulator.md
has the whole comparison, bursty traffic included, where it does not yet)."""

from __future__ import annotations

import pytest

from smoelib.settings import load_settings
from smoelib.sim.env import SimEnv
from smoelib.sim.summary import summarise
from smoelib.topology import build_dag

pytestmark = pytest.mark.heavy  # a 300 s request-level episode


def _run(engine: str):
    dag = build_dag("examples/pipelines/gpt2-moe.yml")
    env = SimEnv(dag, load_settings({"simulator": {"engine": engine}}), trace="conv-train",
                 duration_s=300.0)
    env.reset(seed=1)
    done = False
    while not done:
        done = env.step(None).done
    return summarise(env)


def test_fluid_agrees_with_the_request_level_engine_on_conv_train():
    req, fl = _run("compiled"), _run("fluid")
    assert fl.requests == req.requests and fl.dropped == req.dropped == 0
    assert fl.ttft_p95_ms == pytest.approx(req.ttft_p95_ms, rel=0.10)
    assert fl.tpot_p95_ms == pytest.approx(req.tpot_p95_ms, rel=0.10)
    assert abs(fl.slo_attainment - req.slo_attainment) <= 0.01
    assert fl.cost == pytest.approx(req.cost, rel=0.05)
