"""The fast training mode against the request-level engine where it agrees (docs/simulator.md
has the whole comparison, bursty traffic and ``hpa`` included, where it does not yet)."""

from __future__ import annotations

import numpy as np
import pytest

from smoelib.harness.evaluate import RunSpec, run_one
from smoelib.sim.routing import RoutingModel, RoutingParams

PIPELINE = "examples/pipelines/gpt2-moe.yml"


def _run(policy: str, engine: str, tmp_path) -> dict:
    config = tmp_path / f"{engine}.yaml"
    config.write_text(f"simulator:\n  engine: {engine}\n")
    return run_one(RunSpec(PIPELINE, "conv-train", policy, 1, 300.0, config=str(config)))["run"]


@pytest.mark.heavy  # two 300 s request-level episodes
@pytest.mark.parametrize("policy", ["static-mean", "queueing"])
def test_fluid_agrees_with_the_request_level_engine_on_conv_train(policy, tmp_path):
    req, fl = _run(policy, "compiled", tmp_path), _run(policy, "fluid", tmp_path)
    assert fl["requests"] == req["requests"] and fl["dropped"] == req["dropped"] == 0
    assert fl["ttft_p95_ms"] == pytest.approx(req["ttft_p95_ms"], rel=0.10)
    assert fl["tpot_p95_ms"] == pytest.approx(req["tpot_p95_ms"], rel=0.10)
    assert abs(fl["slo_attainment"] - req["slo_attainment"]) <= 0.01
    assert fl["cost"] == pytest.approx(req["cost"], rel=0.05)


def test_decode_inclusion_is_what_the_sampler_draws():
    """A decode token's chance to pick each expert, as the fluid engine reads it, is the
    frequency of the picks the request-level engines draw (distinct top-k picks and the
    previous layer's pull), not ``top_k x popularity``."""
    router = RoutingModel([6, 6, 6], [2, 2, 2], max_tokens=512,
                          params=RoutingParams(gini=0.35, affinity=0.3),
                          seed=np.random.SeedSequence(3))
    incl = router.decode_inclusion(0, task=1)
    assert incl.sum(axis=1) == pytest.approx([2.0, 2.0, 2.0])
    drawn = router.decode(np.random.default_rng(5), 40_000, 0.0, task=1)
    for layer, picks in enumerate(drawn):
        freq = np.bincount(picks.ravel(), minlength=6) / picks.shape[0]
        assert incl[layer] == pytest.approx(freq, abs=0.03)  # 4,000 samples: sd 0.007
    pop = router.popularity(0.0, 1)[0]
    hot = int(np.argmax(pop))
    assert incl[0, hot] < 2 * pop[hot] - 0.02  # a hot expert is picked at most once a token
    assert router.decode_inclusion(0, task=1) == pytest.approx(incl, abs=0)  # one estimate
