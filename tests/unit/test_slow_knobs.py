"""Slow knobs in the tick: hysteresis, the change threshold and the rollout budget (fed by what
the actuator reports it rolled)."""

from __future__ import annotations

from smoelib.core.decisions import ExpertDecision
from smoelib.core.slow_knobs import SlowKnobMemory, SlowKnobRules, hold_slow_knobs
from smoelib.settings import load_settings

NODES = [f"moe1/e{i}" for i in range(3)]
RULES = SlowKnobRules()
BEFORE = {n: ExpertDecision(2, 1.0, 2048, 0.25, 4) for n in NODES}


def expert(concurrency=4, gpu_share=0.25, cpu=1.0):
    return ExpertDecision(replicas=2, cpu=cpu, memory_mb=2048, gpu_share=gpu_share,
                          concurrency=concurrency)


def hold(experts, memory, now, rules=RULES, pods=None):
    """The rules' result with the notes' texts (their rule tags dropped)."""
    out, memory, notes = hold_slow_knobs(experts, BEFORE, memory, rules=rules,
                                         pods=pods or {n: 2 for n in NODES}, now=now)
    return out, memory, [text for _, text in notes]


def test_a_slow_knob_changes_only_after_k_ticks_of_the_same_value():
    memory = SlowKnobMemory()
    for t in range(2):
        out, memory, notes = hold({"moe1/e0": expert(concurrency=8)}, memory, 100.0 + t)
        assert out["moe1/e0"].concurrency == 4 and any("held" in n for n in notes)
    out, memory, notes = hold({"moe1/e0": expert(concurrency=8)}, memory, 102.0)
    assert out["moe1/e0"].concurrency == 8 and notes == []


def test_a_changing_value_restarts_the_count():
    memory = SlowKnobMemory()
    for t, c in enumerate((8, 16, 8, 8)):
        out, memory, _ = hold({"moe1/e0": expert(concurrency=c)}, memory, 100.0 + t)
        assert out["moe1/e0"].concurrency == 4


def test_small_changes_stay_below_the_threshold_forever():
    memory = SlowKnobMemory()
    for t in range(5):  # 0.25 -> 0.28 is 12% < 20%
        out, memory, notes = hold({"moe1/e0": expert(gpu_share=0.28)}, memory, 100.0 + t)
        assert out["moe1/e0"].gpu_share == 0.25 and "threshold" in notes[0]


def test_fast_knobs_pass_at_once():
    out, _, notes = hold({"moe1/e0": expert(cpu=2.0)}, SlowKnobMemory(), 100.0)
    assert out["moe1/e0"].cpu == 2.0 and notes == []


def test_resources_are_slow_without_in_place_resize_or_through_the_gateway():
    assert SlowKnobRules.from_settings(load_settings(None)).knobs == ("gpu_share", "concurrency")
    for override in ({"cluster": {"in_place_resize": False}},
                     {"vertical": {"backend": "openfaas-gateway"}}):
        assert "cpu" in SlowKnobRules.from_settings(load_settings(override)).knobs


def test_the_budget_counts_this_ticks_rollouts_and_what_the_actuator_reported():
    rules = SlowKnobRules(hysteresis_ticks=1, budget_per_min=4)
    experts = {n: expert(concurrency=8) for n in NODES}
    out, memory, notes = hold(experts, SlowKnobMemory(), 100.0, rules)
    assert [out[n].concurrency for n in NODES] == [8, 8, 4]  # 2 + 2 pods fit, the third waits
    assert any("waits for the budget (4/4 pods this minute)" in n for n in notes)
    memory = memory.record((("f0", 2), ("f1", 2)), now=100.0)  # the actuator rolled them
    out, memory, _ = hold({"moe1/e2": expert(concurrency=8)}, memory, 130.0, rules)
    assert out["moe1/e2"].concurrency == 4  # still 4 of 4 within the minute
    out, memory, _ = hold({"moe1/e2": expert(concurrency=8)}, memory, 160.5, rules)
    assert out["moe1/e2"].concurrency == 8 and memory.rollouts == ()


def test_a_function_larger_than_the_budget_rolls_alone_in_an_empty_minute():
    rules = SlowKnobRules(hysteresis_ticks=1, budget_per_min=4)
    out, _, _ = hold({"moe1/e0": expert(concurrency=8)}, SlowKnobMemory(), 100.0, rules,
                     pods={"moe1/e0": 6})
    assert out["moe1/e0"].concurrency == 8
    busy = SlowKnobMemory().record((("f", 1),), now=90.0)
    out, _, _ = hold({"moe1/e0": expert(concurrency=8)}, busy, 100.0, rules,
                     pods={"moe1/e0": 6})
    assert out["moe1/e0"].concurrency == 4


def test_before_1_35_a_memory_decrease_is_slow_and_an_increase_is_not():
    rules = SlowKnobRules.from_settings(load_settings(None))
    assert rules.decreases == ("memory_mb",)
    lower = ExpertDecision(2, 1.0, 1024, 0.25, 4)
    higher = ExpertDecision(2, 1.0, 4096, 0.25, 4)
    out, _, notes = hold({"moe1/e0": lower, "moe1/e1": higher}, SlowKnobMemory(), 0.0,
                         rules=rules, pods={"moe1/e0": 2})
    assert out["moe1/e0"].memory_mb == 2048 and "memory_mb 2048 -> 1024 seen 1/3" in notes[0]
    assert out["moe1/e1"].memory_mb == 4096
    later = SlowKnobRules.from_settings(load_settings({"cluster": {
        "in_place_memory_decrease": True}}))
    assert later.decreases == ()


def test_the_simulator_rolls_pods_for_a_memory_decrease_before_1_35():
    from types import MappingProxyType

    from smoelib.core.decisions import PipelineDecision
    from smoelib.sim.env import SimEnv
    from smoelib.topology import build_dag

    dag = build_dag("examples/pipelines/bert-moe.yml")
    for allowed, rollouts in ((False, 1), (True, 0)):
        env = SimEnv(dag, load_settings({"cluster": {"in_place_memory_decrease": allowed}}),
                     trace="poisson", duration_s=30)
        env.reset(1)
        experts = {n: ExpertDecision(1, s.cpu, 4096, s.gpu_share, s.concurrency)
                   for n in dag.experts if (s := dag.spec(n))}
        env.step(PipelineDecision(dag.name, 0.0, MappingProxyType(experts)))  # in place
        assert env.rollouts == 0
        experts["moe1/e0"] = ExpertDecision(1, 1.0, 2048, 0.25, 4)
        env.step(PipelineDecision(dag.name, 15.0, MappingProxyType(experts)))
        assert env.rollouts == rollouts


def test_past_the_note_limit_a_rule_writes_one_note_for_its_held_changes():
    """Per expert up to NOTE_LIMIT held changes of a rule in a tick; past it, one note that
    counts them and names the first five (a deepseek-v3 size proposal would write 15,000).
    What is held is the same either way."""
    from smoelib.core.slow_knobs import NOTE_LIMIT

    many = [f"moe1/e{i}" for i in range(NOTE_LIMIT + 8)]
    before = {n: ExpertDecision(2, 1.0, 2048, 0.25, 4) for n in many}

    def notes_of(nodes, rules):
        out, _, notes = hold_slow_knobs({n: expert(concurrency=8) for n in nodes}, before,
                                        SlowKnobMemory(), rules=rules,
                                        pods={n: 2 for n in nodes}, now=100.0)
        return [out[n].concurrency for n in nodes], notes

    held, notes = notes_of(many[:NOTE_LIMIT], RULES)  # at the limit: one note each
    assert held == [4] * NOTE_LIMIT and len(notes) == NOTE_LIMIT
    held, notes = notes_of(many, RULES)
    assert held == [4] * len(many) and notes == [("hysteresis", (
        f"{len(many)} slow-knob changes held (0 within the 20% threshold, {len(many)} seen "
        "fewer than 3 ticks): moe1/e0 concurrency 4 -> 8, moe1/e1 concurrency 4 -> 8, "
        "moe1/e2 concurrency 4 -> 8, moe1/e3 concurrency 4 -> 8, moe1/e4 concurrency 4 -> 8 "
        f"and {len(many) - 5} more"))]
    held, notes = notes_of(many, SlowKnobRules(hysteresis_ticks=1, budget_per_min=4))
    late = len(many) - 2  # 2 + 2 pods fit
    assert held == [8, 8] + [4] * late and notes == [("budget", (
        f"rollouts of {late} experts ({2 * late} pods) wait for the budget (4/4 pods this "
        "minute): moe1/e2 (2 pod(s) for concurrency), moe1/e3 (2 pod(s) for concurrency), "
        "moe1/e4 (2 pod(s) for concurrency), moe1/e5 (2 pod(s) for concurrency), moe1/e6 "
        f"(2 pod(s) for concurrency) and {late - 5} more"))]
