"""The control loop's safety: hysteresis and threshold on slow knobs, the rollout budget."""

from __future__ import annotations

from smoelib.core.decisions import ExpertDecision
from smoelib.vertical import PipelineState, PlanRules, SafetyMemory, SafetyRules, guarded_plan
from smoelib.vertical.backends.kubernetes_state import function_state
from tests.integration.k8s_fixtures import openfaas_deployment

NS = "openfaas-fn"
DEFAULT = PlanRules()
SAFETY = SafetyRules()
FUNCTIONS = {f"moe1/e{i}": f"bert-moe-moe1-e{i}" for i in range(3)}
ENV = {"max_inflight": "4", "CUDA_MPS_ACTIVE_THREAD_PERCENTAGE": "25"}


def expert(concurrency=4, gpu_share=0.25, cpu=1.0):
    return ExpertDecision(replicas=2, cpu=cpu, memory_mb=2048, gpu_share=gpu_share,
                          concurrency=concurrency)


def live(replicas=2):
    fs = {f: function_state(f, openfaas_deployment(f, env=ENV, replicas=replicas), [],
                            rules=PlanRules()) for f in FUNCTIONS.values()}
    return PipelineState("bert-moe", NS, fs)


def tick(experts, memory, now, rules=SAFETY, state=None, plan_rules=DEFAULT):
    return guarded_plan(experts, state or live(), memory, functions=FUNCTIONS,
                        plan_rules=plan_rules, rules=rules, now=now)


def test_a_slow_knob_changes_only_after_k_ticks_of_the_same_value():
    memory = SafetyMemory()
    for t in range(2):
        plan, memory = tick({"moe1/e0": expert(concurrency=8)}, memory, 100.0 + t)
        assert plan.patches == () and any("held" in n for n in plan.notes)
    plan, memory = tick({"moe1/e0": expert(concurrency=8)}, memory, 102.0)
    assert [p.target.name for p in plan.patches] == ["bert-moe-moe1-e0"]


def test_a_changing_value_restarts_the_count():
    memory = SafetyMemory()
    for t, c in enumerate((8, 16, 8, 8)):
        plan, memory = tick({"moe1/e0": expert(concurrency=c)}, memory, 100.0 + t)
        assert plan.patches == ()


def test_small_changes_stay_below_the_threshold_forever():
    memory = SafetyMemory()
    for t in range(5):  # 0.25 -> 0.28 is 12% < 20%
        plan, memory = tick({"moe1/e0": expert(gpu_share=0.28)}, memory, 100.0 + t)
        assert plan.patches == ()


def test_fast_knobs_pass_at_once():
    plan, _ = tick({"moe1/e0": expert(cpu=1.05)}, SafetyMemory(), 100.0,
                   state=_with_pods())
    assert [p.subresource for p in plan.patches] == ["resize"]


def _with_pods():
    from tests.integration.k8s_fixtures import openfaas_pod

    fs = {}
    for f in FUNCTIONS.values():
        dep = openfaas_deployment(f, env=ENV)
        fs[f] = function_state(f, dep, [openfaas_pod(dep, 0)], rules=PlanRules())
    return PipelineState("bert-moe", NS, fs)


def test_rollout_budget_defers_what_does_not_fit_this_minute():
    rules = SafetyRules(hysteresis_ticks=1, budget_per_min=4)
    experts = {n: expert(concurrency=8) for n in FUNCTIONS}
    plan, memory = tick(experts, SafetyMemory(), 100.0, rules)
    assert [p.function for p in plan.patches] == ["bert-moe-moe1-e0", "bert-moe-moe1-e1"]
    assert any("waits for the budget" in n for n in plan.notes)
    plan, memory = tick(experts, memory, 130.0, rules)
    assert plan.patches == ()  # 4 of 4 pods spent within the minute
    done = {f: function_state(f, openfaas_deployment(f, env={**ENV, "max_inflight": "8"}), [],
                              rules=PlanRules()) for f in list(FUNCTIONS.values())[:2]}
    state = live()
    state = PipelineState("bert-moe", NS, {**state.functions, **done})
    plan, memory = tick(experts, memory, 161.0, rules, state=state)
    assert [p.function for p in plan.patches] == ["bert-moe-moe1-e2"]


def test_a_function_larger_than_the_budget_rolls_alone_in_an_empty_minute():
    rules = SafetyRules(hysteresis_ticks=1, budget_per_min=4)
    plan, memory = tick({"moe1/e0": expert(concurrency=8)}, SafetyMemory(), 100.0, rules,
                        state=live(replicas=6))
    assert len(plan.patches) == 1 and memory.rollouts == ((100.0, 6),)


def test_deferred_rollouts_do_not_pause_their_scaledobject():
    rules = SafetyRules(hysteresis_ticks=1, budget_per_min=2)
    fs = {f: function_state(f, openfaas_deployment(f, env=ENV), [], rules=PlanRules(),
                            scaledobject=(f"so-{f}", False)) for f in FUNCTIONS.values()}
    plan, _ = tick({n: expert(concurrency=8) for n in FUNCTIONS}, SafetyMemory(), 100.0, rules,
                   state=PipelineState("bert-moe", NS, fs),
                   plan_rules=PlanRules(pause_scaledobject=True))
    assert [(p.target.kind, p.function) for p in plan.patches] == [
        ("Deployment", "bert-moe-moe1-e0"), ("ScaledObject", "bert-moe-moe1-e0")]
