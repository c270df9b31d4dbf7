"""The safety shield: it lifts replicas to a stability bound at the observed load and its
trend, adds a replica at once after a burst of 429s (unless capacity is already coming), holds
its lifts, lifts CPU in place where one call alone is too slow for the SLO (never a knob that
rolls pods), and runs only under the profiles that name it."""

from __future__ import annotations

import math
from types import MappingProxyType

import numpy as np
import pytest

from smoelib.core.decisions import ExpertDecision, PipelineDecision
from smoelib.core.guards import PROFILES, guard
from smoelib.core.observation import NODE_FIELDS, Observation
from smoelib.core.service import full_gpu_interference, service_models
from smoelib.core.tick import TickState, tick
from smoelib.policy.base import default_guards, get_decider
from smoelib.settings import load_settings
from smoelib.topology import build_dag

DAG = build_dag({"name": "p", "slo_ms": 100, "stages": [
    {"id": "a"}, {"id": "m", "experts": 2, "replicas": {"min": 0, "max": 10},
                  "profile": {"base_ms": 2.0, "per_token_ms": 0.0}}]})
SETTINGS = load_settings({"guards": {"shield_bound": 0.9, "shield_horizon_s": 30.0,
                                     "shield_hold_s": 60.0}, "cluster": {"gpus": 100}})


def decision(*replicas, share=0.25, concurrency=4):
    experts = {f"m/e{i}": ExpertDecision(r, 1.0, 2048, share, concurrency)
               for i, r in enumerate(replicas)}
    return PipelineDecision("p", 0.0, MappingProxyType(experts))


def observation(calls=(0.0, 0.0), *, t=0.0, rejected=(0.0, 0.0), ready=(1, 1),
                starting=(0, 0), dag=DAG, per_call=1.0, cpu=1.0, share=0.25):
    n = len(dag.nodes)
    arrays = {f: np.zeros(n) for f in NODE_FIELDS}
    at = {v: i for i, v in enumerate(dag.nodes)}
    for i in range(2):
        j = at[f"m/e{i}"]
        arrays["calls_per_s"][j] = calls[i]
        arrays["tokens_per_s"][j] = calls[i] * per_call
        arrays["rejected_per_s"][j] = rejected[i]
        arrays["replicas_ready"][j], arrays["replicas_starting"][j] = ready[i], starting[i]
        arrays["cpu"][j], arrays["memory_mb"][j] = cpu, 2048
        arrays["gpu_share"][j], arrays["concurrency"][j] = share, 4
    return Observation(time_s=t, nodes=dag.nodes, request_rate=1.0, p95_ms=10.0, p99_ms=10.0,
                       **arrays)


def service_ms(share=0.25, concurrency=4) -> float:
    """A call's share of a full batch (``max_inflight`` calls on the pod's one worker): what
    the shield charges a call."""
    model = service_models(DAG, SETTINGS)[list(DAG.nodes).index("m/e0")]
    inter = full_gpu_interference(share, SETTINGS.simulator.mps_interference)
    n = float(concurrency)
    return float(model.batch_ms(n, n, cpu=1.0, share=share, interference=inter)) / n


def reps(result):
    return [result.decision.experts[f"m/e{i}"].replicas for i in range(2)]


def test_the_shield_lifts_an_under_provisioned_expert_to_the_bound_and_touches_no_other_knob():
    s = service_ms()
    # e0 offered 3.5 workers' worth at one replica: ceil(3.5 / 0.9) = 4; e1 is safe
    calls = (3.5 * 1000.0 / s, 0.2 * 1000.0 / s)
    proposed = decision(1, 1, share=0.25, concurrency=4)
    out = guard(proposed, dag=DAG, settings=SETTINGS, last=proposed,
                observation=observation(calls))
    assert reps(out) == [4, 1] and out.fired.count("shield") == 1
    assert "m/e0: shield lifted replicas 1 -> 4 (offered utilisation 3.50 > 0.9" in out.notes[0]
    for node in ("m/e0", "m/e1"):  # never a knob that rolls pods, nor CPU or memory
        a, b = out.decision.experts[node], proposed.experts[node]
        assert (a.cpu, a.memory_mb, a.gpu_share, a.concurrency) == \
            (b.cpu, b.memory_mb, b.gpu_share, b.concurrency)
    # a proposal already above the bound is left alone; so is every expert without the shield
    assert reps(guard(decision(6, 1), dag=DAG, settings=SETTINGS, last=decision(6, 1),
                      observation=observation(calls))) == [6, 1]
    bare = guard(proposed, dag=DAG, settings=SETTINGS, last=proposed,
                 observation=observation(calls), profile="unshielded")
    assert reps(bare) == [1, 1] and "shield" not in bare.fired


def test_the_shield_reads_the_trend_a_short_horizon_ahead():
    s = service_ms()
    rate = 0.8 * 1000.0 / s  # 0.8 workers' worth now: safe at one replica
    first = guard(decision(1, 1), dag=DAG, settings=SETTINGS, last=decision(1, 1),
                  observation=observation((rate / 2, 0.0), t=0.0))
    assert reps(first) == [1, 1]
    assert service_ms(concurrency=1) > 1.5 * service_ms()  # a full batch amortises the base
    # +0.2 in 10 s: 30 s ahead the trend says 0.8 + 3 x 0.2 = 1.4 workers' worth
    mid = guard(decision(1, 1), dag=DAG, settings=SETTINGS, last=decision(1, 1),
                observation=observation((0.6 * rate / 0.8, 0.0), t=0.0))
    second = guard(decision(1, 1), dag=DAG, settings=SETTINGS, last=decision(1, 1),
                   observation=observation((rate, 0.0), t=10.0), shield_memory=mid.shield)
    assert reps(second) == [2, 1] and "(forecast)" in second.notes[0]
    assert "at %.0f calls/s" % (1.4 * rate / 0.8) in second.notes[0]
    # doubled in 10 s: the trend says 2.0, a short horizon forecasts at most a doubling (1.6)
    third = guard(decision(1, 1), dag=DAG, settings=SETTINGS, last=decision(1, 1),
                  observation=observation((rate, 0.0), t=10.0), shield_memory=first.shield)
    assert reps(third) == [2, 1]
    # an expert that had no calls has no trend yet (a filling rate window is no ramp)
    cold = guard(decision(1, 1), dag=DAG, settings=SETTINGS, last=decision(1, 1),
                 observation=observation((0.0, 0.0), t=0.0))
    assert reps(guard(decision(1, 1), dag=DAG, settings=SETTINGS, last=decision(1, 1),
                      observation=observation((rate, 0.0), t=10.0),
                      shield_memory=cold.shield)) == [1, 1]


def test_a_burst_of_429s_adds_a_replica_at_once_unless_capacity_is_on_its_way():
    seen = observation((10.0, 10.0), rejected=(5.0, 0.0), ready=(2, 1))
    out = guard(decision(2, 1), dag=DAG, settings=SETTINGS, last=decision(2, 1),
                observation=seen)
    assert reps(out) == [3, 1] and "5 429s/s" in out.notes[0]
    coming = observation((10.0, 10.0), rejected=(5.0, 0.0), ready=(2, 1), starting=(1, 0))
    assert reps(guard(decision(2, 1), dag=DAG, settings=SETTINGS, last=decision(2, 1),
                      observation=coming)) == [2, 1]


def test_a_lift_is_held_for_the_stabilisation_window():
    seen = observation((10.0, 10.0), rejected=(5.0, 0.0), ready=(2, 1), t=0.0)
    lifted = guard(decision(2, 1), dag=DAG, settings=SETTINGS, last=decision(2, 1),
                   observation=seen)
    calm = observation((10.0, 10.0), ready=(3, 1), t=30.0)
    held = guard(decision(1, 1), dag=DAG, settings=SETTINGS, last=decision(3, 1),
                 observation=calm, shield_memory=lifted.shield)
    assert reps(held) == [3, 1] and "held since a lift" in held.notes[-1]
    later = observation((10.0, 10.0), ready=(3, 1), t=61.0)
    assert reps(guard(decision(1, 1), dag=DAG, settings=SETTINGS, last=decision(3, 1),
                      observation=later, shield_memory=held.shield)) == [1, 1]


def test_the_profiles_and_the_shield_only_baseline_exist_by_name():
    assert PROFILES["production"].shield and not PROFILES["unshielded"].shield
    assert not PROFILES["physical"].shield
    assert default_guards("shield-only") == "production"
    dag = build_dag("examples/pipelines/gpt2-moe.yml")
    settings = load_settings(None)
    proposal = get_decider("shield-only", dag=dag, settings=settings).decide(None)
    for node, e in proposal.experts.items():
        assert e.replicas == max(1, dag.spec(node).replicas_min)
        assert e.cpu == min(settings.actions.cpu)
        assert e.concurrency == dag.spec(node).concurrency


def test_the_tick_carries_the_shields_memory():
    s = service_ms()

    class Fixed:
        def reset(self, seed):
            pass

        def decide(self, obs):
            return decision(1, 1)

    state = TickState()
    r1 = tick(observation((0.4 * 1000.0 / s, 0.0), t=0.0), Fixed(), state, dag=DAG,
              settings=SETTINGS, profile="production", now=0.0)
    assert r1.state.shield.time_s == 0.0 and not math.isnan(r1.state.shield.calls_per_s[1])
    r2 = tick(observation((0.8 * 1000.0 / s, 0.0), t=10.0), Fixed(), r1.state, dag=DAG,
              settings=SETTINGS, profile="production", now=10.0)
    assert r2.decision.experts["m/e0"].replicas == 2  # 0.8, forecast at most 1.6: ceil(1.78)
    assert r2.fired == ("shield",)


@pytest.mark.parametrize("bound", [0.5, 0.9])
def test_the_bound_is_a_setting(bound):
    s = service_ms()
    settings = load_settings({"guards": {"shield_bound": bound}})
    out = guard(decision(1, 1), dag=DAG, settings=settings, last=decision(1, 1),
                observation=observation((1.8 * 1000.0 / s, 0.0)))
    assert reps(out)[0] == math.ceil(1.8 / bound - 1e-9)


# two CPU experts in one MoE layer between two segments: one call's budget is half the SLO
CPU_DAG = build_dag({"name": "p", "slo_ms": 100, "accelerator": "cpu", "stages": [
    {"id": "a"}, {"id": "m", "experts": 2, "replicas": {"min": 0, "max": 10},
                  "profile": {"base_ms": 0.0, "per_token_ms": 0.1}}, {"id": "b"}]})


def cpu_decision(cpu, replicas=(1, 1)):
    experts = {f"m/e{i}": ExpertDecision(r, c, 2048, 0.0, 4)
               for i, (r, c) in enumerate(zip(replicas, cpu, strict=True))}
    return PipelineDecision("p", 0.0, MappingProxyType(experts))


def one_call_ms(settings, tokens, cpu):
    model = service_models(CPU_DAG, settings)[list(CPU_DAG.nodes).index("m/e0")]
    return float(model.batch_ms(1.0, tokens, cpu=cpu, share=0.0))


@pytest.mark.parametrize("tokens, lifted", [(300, 1.0), (700, 2.0), (3000, 4.0), (100, 0.5)])
def test_the_service_floor_lifts_cpu_in_place_to_the_least_choice_that_fits(tokens, lifted):
    settings = load_settings(None)
    assert settings.guards.shield_service_fraction == 0.5
    budget = 0.5 * CPU_DAG.slo_ms  # one MoE layer on the path
    times = {c: one_call_ms(settings, tokens, c) for c in settings.actions.cpu}
    # the expected choice is the least that fits, or the fastest when none does
    fits = [c for c in sorted(times) if times[c] <= budget]
    assert lifted == (fits[0] if fits else max(times))
    proposed = cpu_decision((0.5, 4.0))
    out = guard(proposed, dag=CPU_DAG, settings=settings, last=proposed,
                observation=observation((1.0, 1.0), dag=CPU_DAG, per_call=tokens, cpu=0.5,
                                        share=0.0))
    e0, e1 = out.decision.experts["m/e0"], out.decision.experts["m/e1"]
    assert e0.cpu == lifted and e1.cpu == 4.0  # never lowered
    assert (e0.gpu_share, e0.concurrency, e0.memory_mb) == (0.0, 4, 2048)
    if lifted > 0.5:
        assert out.fired.count("shield") == 1
        assert (f"m/e0: shield lifted cpu 0.5 -> {lifted:g} (one call of {tokens} tokens takes "
                f"{times[0.5]:.1f} ms > {budget:.1f} ms") in out.notes[0]
    else:
        assert "shield" not in out.fired


def test_cpu_and_replicas_lifted_together_are_one_intervention_sized_at_the_new_cpu():
    settings = load_settings(None)
    at_half, at_one = one_call_ms(settings, 300, 0.5), one_call_ms(settings, 300, 1.0)
    rate = 2.5 * 1000.0 / at_one  # 2.5 workers' worth at one core, twice that at half a core
    proposed = cpu_decision((0.5, 0.5))
    out = guard(proposed, dag=CPU_DAG, settings=settings, last=proposed,
                observation=observation((rate, 0.0), dag=CPU_DAG, per_call=300, cpu=0.5,
                                        share=0.0))
    e0 = out.decision.experts["m/e0"]
    assert (e0.cpu, e0.replicas) == (1.0, 3)  # ceil(2.5 / 0.9), not ceil(5 / 0.9)
    assert at_half > 1.9 * at_one
    assert out.fired.count("shield") == 1 and len(out.notes) == 1
    assert "shield lifted cpu 0.5 -> 1 (" in out.notes[0] and " and replicas 1 -> 3 (" \
        in out.notes[0]


@pytest.mark.parametrize("config", [{"cluster": {"in_place_resize": False}},
                                    {"vertical": {"backend": "none"}},
                                    {"vertical": {"backend": "openfaas-gateway",
                                                  "stack_file": "stack.yml"}},
                                    {"guards": {"shield_service_fraction": 0.0}}])
def test_no_cpu_lift_where_cpu_would_roll_pods_or_not_apply_or_the_rule_is_off(config):
    settings = load_settings(config)
    proposed = cpu_decision((0.5, 0.5))
    out = guard(proposed, dag=CPU_DAG, settings=settings, last=proposed,
                observation=observation((1.0, 1.0), dag=CPU_DAG, per_call=3000, cpu=0.5,
                                        share=0.0))
    assert [e.cpu for e in out.decision.experts.values()] == [0.5, 0.5]
    assert "shield" not in out.fired


def test_no_cpu_lift_where_more_cores_do_not_shorten_the_call():
    # a GPU expert at one core per worker: the handler has its core, the FFN is on the GPU
    settings = load_settings({"guards": {"shield_service_fraction": 1e-6}})
    out = guard(decision(1, 1), dag=DAG, settings=settings, last=decision(1, 1),
                observation=observation((1.0, 1.0)))
    assert [e.cpu for e in out.decision.experts.values()] == [1.0, 1.0]
    assert "shield" not in out.fired
