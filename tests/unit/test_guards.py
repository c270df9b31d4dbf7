"""The guards, rule by rule, on a hand-made pipeline."""

from __future__ import annotations

import math
from types import MappingProxyType

import numpy as np
import pytest

from smoelib.core.accounting import gpu_demand
from smoelib.core.decisions import ExpertDecision, PipelineDecision
from smoelib.core.guards import guard
from smoelib.core.observation import NODE_FIELDS, Observation
from smoelib.errors import ConfigError
from smoelib.settings import load_settings
from smoelib.topology import build_dag

DAG = build_dag({"name": "p", "slo_ms": 100, "stages": [
    {"id": "a"}, {"id": "m", "experts": 3, "replicas": {"min": 0, "max": 10}}]})
SETTINGS = load_settings({"guards": {"max_step_up": 3, "max_step_down": 2,
                                     "pressure_threshold": 0.9},
                          "cluster": {"gpus": 100}})


def decision(*replicas, share=0.25, cpu=1.0, pipeline="p", **extra):
    experts = {f"m/e{i}": ExpertDecision(r, cpu, 2048, share, 4) for i, r in enumerate(replicas)}
    experts.update(extra)
    return PipelineDecision(pipeline, 100.0, MappingProxyType(experts))


def reps(result):
    return [result.decision.experts[f"m/e{i}"].replicas for i in range(3)]


def test_a_proposal_within_every_rule_passes_unchanged():
    result = guard(decision(2, 3, 4), dag=DAG, settings=SETTINGS, last=decision(2, 3, 4))
    assert result.accepted and result.notes == ()
    assert reps(result) == [2, 3, 4]


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_nan_and_infinity_are_refused_and_the_last_good_decision_stays(bad):
    last = decision(1, 1, 1)
    proposal = decision(1, 1, 1, **{"m/e2": ExpertDecision(1, bad, 2048, 0.25, 4)})
    result = guard(proposal, dag=DAG, settings=SETTINGS, last=last)
    assert not result.accepted
    assert result.decision is last
    assert result.notes[0].startswith("refused: m/e2.cpu is")


def test_unknown_expert_and_foreign_pipeline_are_refused():
    proposal = decision(1, 1, 1, **{"m/e9": ExpertDecision(1, 1.0, 2048, 0.25, 4)})
    assert guard(proposal, dag=DAG, settings=SETTINGS).notes == (
        "refused: 'm/e9' is not an expert of 'p'",)
    assert not guard(decision(1, 1, 1, pipeline="q"), dag=DAG, settings=SETTINGS).accepted


def test_bounds_from_the_pipeline_and_the_action_space():
    result = guard(decision(12, 0, 1, cpu=99.0), dag=DAG, settings=SETTINGS)
    assert reps(result) == [10, 0, 1]
    assert result.decision.experts["m/e0"].cpu == max(SETTINGS.actions.cpu)
    assert "m/e0: replicas 12 outside [0, 10] -> 10" in result.notes


def test_max_step_up_and_down_are_separate():
    result = guard(decision(9, 0, 5), dag=DAG, settings=SETTINGS, last=decision(1, 6, 5))
    assert reps(result) == [4, 4, 5]
    assert "m/e0: replicas 1 -> 9 limited to 4 (max step +3/-2 per tick)" in result.notes


def observation(p95_ms=10.0, *, dropped_per_s=math.nan, busy=(), desired=None, share=0.25):
    """An observation of DAG: every expert idle unless ``busy``, at ``desired`` replicas."""
    n = len(DAG.nodes)
    arrays = {f: np.zeros(n) for f in NODE_FIELDS}
    at = {v: i for i, v in enumerate(DAG.nodes)}
    for node in busy:
        arrays["calls_per_s"][at[node]] = 1.0
    for i, r in enumerate(desired or ()):
        arrays["replicas_desired"][at[f"m/e{i}"]] = r
    for node in DAG.experts:
        arrays["cpu"][at[node]], arrays["memory_mb"][at[node]] = 1.0, 2048
        arrays["gpu_share"][at[node]], arrays["concurrency"][at[node]] = share, 4
    return Observation(time_s=0.0, nodes=DAG.nodes, request_rate=1.0, p95_ms=p95_ms,
                       p99_ms=p95_ms, ttft_p95_ms=p95_ms, dropped_per_s=dropped_per_s,
                       **arrays)


def test_scale_down_held_under_slo_pressure_only():
    last = decision(5, 5, 5)
    calm = guard(decision(4, 5, 6), dag=DAG, settings=SETTINGS, last=last,
                 observation=observation(80.0))
    assert reps(calm) == [4, 5, 6]
    pressed = guard(decision(4, 5, 6), dag=DAG, settings=SETTINGS, last=last,
                    observation=observation(95.0))
    assert reps(pressed) == [5, 5, 6] and pressed.fired == ("pressure",)
    assert guard(decision(4, 5, 6), dag=DAG, settings=SETTINGS, last=last,
                 observation=observation(math.nan)).accepted
    dropping = guard(decision(4, 5, 6), dag=DAG, settings=SETTINGS, last=last,
                     observation=observation(20.0, dropped_per_s=0.5))
    assert reps(dropping) == [5, 5, 6]  # a dropped request is infinitely late
    assert "dropped requests show SLO pressure" in dropping.notes[0]


def test_gpu_capacity_takes_back_the_largest_increases_first():
    small = load_settings({"cluster": {"gpus": 2}, "guards": {"max_step_up": 10}})
    last = decision(2, 2, 2)  # 6 pods x 0.25 = 1.5 GPUs
    result = guard(decision(2, 8, 3), dag=DAG, settings=small, last=last)  # 3.25 GPUs asked
    assert gpu_demand(result.decision.experts, small) <= 2.0
    assert reps(result) == [2, 3, 3]


def test_device_plugin_counts_slots():
    plugin = load_settings({"gpu_sharing": {"mode": "mps-device-plugin", "slots_per_gpu": 4},
                            "cluster": {"gpus": 1}})
    assert gpu_demand(decision(2, 2, 0, share=0.1).experts, plugin) == 1.0
    result = guard(decision(3, 3, 0, share=0.1), dag=DAG, settings=plugin)
    assert sum(reps(result)) == 4


def test_missing_experts_keep_the_last_decision():
    last = decision(1, 2, 3)
    partial = PipelineDecision("p", 100.0, MappingProxyType(
        {"m/e0": ExpertDecision(2, 1.0, 2048, 0.25, 4)}))
    result = guard(partial, dag=DAG, settings=SETTINGS, last=last)
    assert reps(result) == [2, 2, 3]
    assert "m/e1: no proposal; kept the last decision" in result.notes


def test_a_busy_expert_keeps_one_replica_and_an_idle_one_may_go_to_zero():
    last = decision(1, 1, 2)
    result = guard(decision(0, 0, 2), dag=DAG, settings=SETTINGS, last=last,
                   observation=observation(busy={"m/e0"}))
    assert reps(result) == [1, 0, 2]
    assert "kept one replica of 1 busy experts proposed at zero: m/e0" in result.notes
    assert reps(guard(decision(0, 0, 2), dag=DAG, settings=SETTINGS, last=last,
                      observation=observation())) == [0, 0, 2]


def test_the_physical_profile_runs_only_bounds_and_capacity():
    last = decision(1, 6, 5)
    seen = observation(95.0, busy={"m/e1"})
    result = guard(decision(9, 0, 5, share=1.0), dag=DAG, settings=SETTINGS, last=last,
                   observation=seen, profile="physical")
    assert reps(result) == [9, 0, 5] and result.notes == ()  # no step limit, hold or floor
    assert result.decision.experts["m/e0"].gpu_share == 1.0  # no slow-knob hysteresis
    production = guard(decision(9, 0, 5, share=1.0), dag=DAG, settings=SETTINGS, last=last,
                       observation=seen)
    assert reps(production) == [4, 6, 5]
    assert set(production.fired) == {"step", "pressure", "hysteresis"}
    with pytest.raises(ConfigError, match="unknown guard profile 'lax'"):
        guard(decision(1, 1, 1), dag=DAG, settings=SETTINGS, profile="lax")


def test_before_the_first_decision_the_observed_configuration_is_the_reference():
    seen = observation(desired=(2, 2, 2))
    result = guard(decision(9, 2, 2, share=1.0), dag=DAG, settings=SETTINGS, observation=seen)
    assert reps(result) == [5, 2, 2]  # +3 from the observed 2
    assert result.decision.experts["m/e0"].gpu_share == 0.25  # held: seen 1/3 ticks


def test_busy_experts_are_the_ones_with_calls_in_flight_or_429s():
    import numpy as np

    from smoelib.core.guards import busy_experts
    from smoelib.core.observation import NODE_FIELDS, Observation

    n = len(DAG.nodes)
    arrays = {f: np.zeros(n) for f in NODE_FIELDS}
    at = {v: i for i, v in enumerate(DAG.nodes)}
    arrays["calls_per_s"][at["m/e0"]] = 2.0
    arrays["rejected_per_s"][at["m/e1"]] = 0.5
    arrays["calls_per_s"][at["a"]] = 9.0  # a segment: not an expert
    arrays["inflight"][at["m/e2"]] = np.nan  # unknown is not busy
    obs = Observation(time_s=0.0, nodes=DAG.nodes, request_rate=1.0, p95_ms=10.0, p99_ms=10.0,
                      **arrays)
    assert busy_experts(obs, DAG) == {"m/e0", "m/e1"}


def test_an_integer_too_large_for_a_float_is_refused_with_a_note():
    proposal = decision(1, 1, 1, **{"m/e2": ExpertDecision(1, 1.0, 10 ** 400, 0.25, 4)})
    result = guard(proposal, dag=DAG, settings=SETTINGS, last=decision(1, 1, 1))
    assert not result.accepted and result.notes == (
        "refused: m/e2.memory_mb is an integer of 401 digits, too large for any knob",)


def test_a_table_proposal_is_guarded_as_the_same_dict_is():
    """The decider proposes columns (``ExpertTable``), the baselines dicts: the rules give
    both the same decision and notes, with every adjusting rule but the shield firing."""
    from smoelib.core.decisions import ExpertTable

    rng = np.random.default_rng(7)
    tight = load_settings({"guards": {"max_step_up": 3, "max_step_down": 2,
                                      "pressure_threshold": 0.9, "hysteresis_ticks": 1,
                                      "rollout_budget_per_min": 2}, "cluster": {"gpus": 3}})
    fired = set()
    for settings in (SETTINGS, tight):
        last = decision(2, 2, 2)
        for _ in range(30):
            experts = {f"m/e{i}": ExpertDecision(int(rng.integers(0, 14)),
                                                 float(rng.choice([0.25, 1.0, 99.0])),
                                                 int(rng.choice([512, 2048, 99999])),
                                                 float(rng.choice([0.25, 0.5])), 4)
                       for i in range(3) if rng.random() > 0.1}
            seen = observation(float(rng.choice([10.0, 200.0])), busy=("m/e1",),
                               desired=(3, 3, 3))
            results = [guard(PipelineDecision("p", 100.0, e), dag=DAG, settings=settings,
                             last=last, observation=seen)
                       for e in (MappingProxyType(experts), ExpertTable.of(experts))]
            assert results[0].decision == results[1].decision
            assert results[0].notes == results[1].notes
            assert results[0].fired == results[1].fired
            fired |= set(results[0].fired)
            last = results[0].decision
    assert fired == {"bounds", "step", "pressure", "busy", "hysteresis", "budget", "capacity"}
