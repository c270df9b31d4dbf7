"""``smoe tune``'s search spaces: every point builds its baseline, the contenders share the same
vertical choices, draws are seeded, evaluation data is refused, and the pick is the cheapest
feasible trial or, with none feasible, the one that drops least."""

from __future__ import annotations

import pytest

from smoelib.errors import ConfigError
from smoelib.harness.tune import SECTION, SPACES, Trial, best, check_training, grid
from smoelib.policy.base import get_decider
from smoelib.policy.baselines.common import with_overrides
from smoelib.settings import Settings
from tests.unit.tiny_pipeline import tiny_dag


def _concurrency(space: dict) -> list:
    return space.get("vertical.concurrency", space.get("concurrency"))


@pytest.mark.parametrize("policy", sorted(SPACES))
def test_every_grid_value_is_a_setting_the_baseline_builds_with(policy, tmp_path):
    dag = tiny_dag(tmp_path)
    section = "baselines." + SECTION.get(policy, policy) + "."
    for pick in (min, max):  # the corners of the grid
        values = {section + k: pick(v) for k, v in SPACES[policy].items()}
        settings = with_overrides(Settings(), values)
        decider = get_decider(policy, dag=dag, settings=settings)
        decider.reset(0)


def test_contenders_with_vertical_knobs_search_the_same_choices():
    actions = Settings().actions
    shares = {tuple(SPACES[p]["vertical.gpu_share"]) for p in ("hpa", "kpa", "openfaas")}
    assert shares == {tuple(SPACES["hpa"]["vertical.gpu_share"])}
    assert set(SPACES["hpa"]["vertical.gpu_share"]) <= set(actions.gpu_share)
    assert max(SPACES["hpa"]["vertical.gpu_share"]) == max(actions.gpu_share)
    concurrency = {tuple(_concurrency(SPACES[p]))
                   for p in ("hpa", "kpa", "openfaas", "elasticmoe", "faasconf")}
    assert len(concurrency) == 1
    assert max(next(iter(concurrency))) == max(actions.concurrency)
    assert set(next(iter(concurrency))) <= set(actions.concurrency)


def test_queueing_slo_fraction_is_not_capped_at_its_default():
    default = Settings().baselines.queueing.slo_fraction
    assert max(SPACES["queueing"]["slo_fraction"]) > default
    assert min(SPACES["queueing"]["slo_fraction"]) < 1.0


def test_grid_draws_are_seeded_and_without_replacement():
    a = grid("hpa", 10, seed=0)
    assert a == grid("hpa", 10, seed=0)
    assert len({tuple(sorted(c.items())) for c in a}) == 10
    assert a != grid("hpa", 10, seed=1)


def test_evaluation_data_is_refused():
    with pytest.raises(ConfigError) as e:
        check_training(["conv-train", "conv-eval", "conv"], [1, 1000])
    assert len(e.value.problems) == 3
    check_training(["conv-train", "bursty"], [1, 999])


def test_best_is_the_cheapest_feasible_trial_else_the_one_that_drops_least():
    cheap_but_slow = Trial({"k": 1}, cost=1.0, attainment=0.95, dropped=0, feasible=False)
    dear = Trial({"k": 2}, cost=3.0, attainment=0.999, dropped=0, feasible=True)
    fair = Trial({"k": 3}, cost=2.0, attainment=0.9995, dropped=0, feasible=True)
    assert best([cheap_but_slow, dear, fair]) is fair
    # none feasible: a low P95 over the completed requests does not excuse dropped ones
    fast_dropping = Trial({"k": 4}, cost=1.0, attainment=0.5, dropped=40, feasible=False)
    slow_complete = Trial({"k": 5}, cost=1.5, attainment=0.9, dropped=0, feasible=False)
    assert best([fast_dropping, slow_complete, cheap_but_slow]) is cheap_but_slow
    # none feasible: meeting the target on more runs comes first, then drops, then cost; the
    # dearest configuration's better attainment on a trace nothing meets does not win
    lavish = Trial({"k": 6}, cost=9.0, attainment=0.8, dropped=0, feasible=False, runs_met=1)
    lean = Trial({"k": 7}, cost=2.0, attainment=0.3, dropped=0, feasible=False, runs_met=1)
    none_met = Trial({"k": 8}, cost=1.0, attainment=0.7, dropped=0, feasible=False)
    assert best([lavish, none_met, lean]) is lean
