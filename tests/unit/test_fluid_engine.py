"""The fast training mode against the request-level engine where it agrees (docs/simulator.md
has the whole comparison, bursty traffic and ``hpa`` included, where it does not yet)."""

from __future__ import annotations

import numpy as np
import pytest

from benchmarks.agreement import HPA_RPS, POLICIES, TRACES, report
from benchmarks.fluid_nodes import PRESETS, node_model, simulate
from smoelib.harness.evaluate import RunSpec, run_one
from smoelib.sim.routing import RoutingModel, RoutingParams

PIPELINE = "examples/pipelines/gpt2-moe.yml"


def _run(policy: str, trace: str, engine: str, tmp_path, extra: str = "") -> dict:
    config = tmp_path / f"{engine}.yaml"
    config.write_text(f"simulator:\n  engine: {engine}\n{extra}")
    return run_one(RunSpec(PIPELINE, trace, policy, 1, 300.0, config=str(config)))["run"]


@pytest.mark.heavy  # two 300 s request-level episodes each
@pytest.mark.parametrize(("policy", "trace", "extra", "cost_tol"), [
    ("static-mean", "conv-train", "", 0.05), ("queueing", "conv-train", "", 0.05),
    # hpa on calls per second (the agreement table's, benchmarks/agreement.py), then
    # gpt2-moe's tuned pick (calls in flight), whose cost agrees less closely
    ("hpa", "conv-train", HPA_RPS, 0.05),
    # the tuned in-flight target of 0.25 calls per replica: the fast mode's instants of calls in
    # flight are Poisson around the mean, the request-level engine's clump more (its cost was
    # 0.88x the request-level engine's when this was written; 0.70x with the mean alone)
    ("hpa", "conv-train", "", 0.15),
    ("static-mean", "bursty", "", None)])
def test_fluid_agrees_with_the_request_level_engine(policy, trace, extra, cost_tol, tmp_path):
    """P95 TTFT and TPOT within 10 % everywhere; attainment within a point and the same cost
    on conv-train. On bursty attainment is off by 2-10 points (docs/simulator.md)."""
    req = _run(policy, trace, "compiled", tmp_path, extra)
    fl = _run(policy, trace, "fluid", tmp_path, extra)
    assert fl["requests"] == req["requests"]
    assert fl["ttft_p95_ms"] == pytest.approx(req["ttft_p95_ms"], rel=0.10)
    assert fl["tpot_p95_ms"] == pytest.approx(req["tpot_p95_ms"], rel=0.10)
    if trace == "conv-train":
        assert fl["dropped"] == req["dropped"] == 0
        assert abs(fl["slo_attainment"] - req["slo_attainment"]) <= 0.01
        assert fl["cost"] == pytest.approx(req["cost"], rel=cost_tol)


@pytest.mark.parametrize(("top_k", "tol"), [(2, 0.012), (1, 0.012), (3, 0.04)])
def test_decode_inclusion_is_what_the_sampler_draws(top_k, tol):
    """A decode token's chance to pick each expert, as the fluid engine reads it, is the
    frequency of the picks the request-level engines draw (distinct top-k picks and the
    previous layer's pull), not ``top_k x popularity``: exact for one or two picks, sampled
    (4,000 passes) for more."""
    router = RoutingModel([6, 6, 6], [top_k] * 3, max_tokens=512,
                          params=RoutingParams(gini=0.35, affinity=0.3),
                          seed=np.random.SeedSequence(3))
    incl = router.decode_inclusion(0, task=1)
    assert incl.sum(axis=1) == pytest.approx([top_k] * 3)
    drawn = router.decode(np.random.default_rng(5), 40_000, 0.0, task=1)
    for layer, picks in enumerate(drawn):
        freq = np.bincount(picks.ravel(), minlength=6) / picks.shape[0]
        assert incl[layer] == pytest.approx(freq, abs=tol)
    pop = router.popularity(0.0, 1)[0]
    hot = int(np.argmax(pop))
    if top_k > 1:  # a hot expert is picked at most once a token
        assert incl[0, hot] < top_k * pop[hot] - 0.02
    assert router.decode_inclusion(0, task=1) == pytest.approx(incl, abs=0)  # one estimate


@pytest.mark.parametrize("preset", ["expert", "expert-16"])
@pytest.mark.parametrize("prefill", [0.0, 0.03])
def test_one_worker_pod_is_solved_as_a_direct_simulation_serves_it(preset, prefill):
    """A one-worker pod fed Poisson arrivals (benchmarks/fluid_nodes.py): the node model's
    batch chain (``simulator.fluid_pods: chain``) against the pod served call by call, from
    light load to 84 % busy."""
    workers, fixed, per_call, per_token, cap, rates = PRESETS[preset]
    for lam in rates[1::2]:
        sim = simulate(lam, workers, fixed, per_call, per_token, cap, prefill, calls=60_000)
        lat, batch, busy, refused = node_model(lam, workers, fixed, per_call, per_token, cap,
                                               prefill, chain=True)
        # the simulation's latency is every call's, the model's a decode call's
        assert lat == pytest.approx(sim[0], rel=0.03 + 0.05 * prefill / 0.03)
        assert batch == pytest.approx(sim[1], rel=0.03)
        assert busy == pytest.approx(sim[2], abs=0.02)
        assert refused == pytest.approx(sim[3], rel=0.15, abs=0.002)


def test_the_agreement_criteria_count_the_noise_floor_as_a_tie():
    """benchmarks/agreement.py's criteria on made-up runs: P95s within 10 %, attainment within
    a point of the request-level mean, and a ranking that agrees where the request-level
    draws order the policies and may differ where their ranges overlap."""
    def run(att, ttft=100.0, tpot=50.0):
        return {"slo_attainment": att, "ttft_p95_ms": ttft, "tpot_p95_ms": tpot}

    request = {"static-mean": [0.80, 0.82], "queueing": [0.81, 0.83], "hpa": [0.90, 0.90]}
    fluid = {"static-mean": run(0.815), "queueing": run(0.80, tpot=56.0), "hpa": run(0.79)}
    rows = {}
    for trace in TRACES:
        for policy in POLICIES:
            rows[(trace, policy, 1, "request")] = [run(a) for a in request[policy]]
            rows[(trace, policy, 1, "chain")] = [fluid[policy]]
    last = report(rows, [1], ["chain"])[-1]
    # queueing's TPOT 12 % high and 2 points low; hpa 11 points low and last, where it leads
    assert last == ("chain: P95 TTFT and TPOT within 10% in 4/6; attainment within 1 point in "
                    "2/6; the same ranking in 0/2 trace-seeds")
    fluid["hpa"] = run(0.86)
    fluid["queueing"] = run(0.825)
    for trace in TRACES:
        rows[(trace, "hpa", 1, "chain")] = [fluid["hpa"]]
        rows[(trace, "queueing", 1, "chain")] = [fluid["queueing"]]
    assert report(rows, [1], ["chain"])[-1].endswith("the same ranking in 2/2 trace-seeds")


@pytest.mark.parametrize("service_ms, wait_ms", [(0.78, 0.0), (0.78, 0.1), (0.78, 0.3),
                                                 (0.5, 1.0), (2.5, 2.0), (0.3, 3.0)])
def test_call_latency_buckets_hold_the_service_noise_and_the_wait(service_ms, wait_ms):
    """A call's latency in the buckets is its service times the engines' gamma noise after an
    exponential wait: within 1 % of the calls in every bucket of a sample of the two, so a
    P95 read from the buckets is the request-level engine's (docs/simulator.md)."""
    from smoelib.sim.fluid import _add_latencies, noise_cdf_table
    from smoelib.sim.telemetry import CALL_BOUNDS_S

    cv, n = 0.2, 400_000
    rng = np.random.default_rng(0)
    sample = (service_ms / 1000.0 * rng.gamma(1 / cv**2, cv**2, n)
              + (rng.exponential(wait_ms / 1000.0, n) if wait_ms else 0.0))
    edges = np.concatenate([[-1.0], CALL_BOUNDS_S[:-1], [np.inf]])
    want = np.histogram(sample, edges)[0] / n
    got = np.zeros((1, CALL_BOUNDS_S.size))
    _add_latencies(got, CALL_BOUNDS_S, np.ones(1), np.array([service_ms / 1000.0]),
                   np.array([wait_ms / 1000.0]), cv, noise_cdf_table(cv))
    assert got.sum() == pytest.approx(1.0)
    assert np.abs(got[0] - want).max() < 0.01, (got[0], want)
