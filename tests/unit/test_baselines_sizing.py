"""queueing sizing, floor, elasticmoe against hand-computed numbers on a hand-made pipeline."""

from __future__ import annotations

import dataclasses
import math
from statistics import NormalDist

import numpy as np
import pytest

from smoelib.policy.base import get_decider
from smoelib.policy.baselines.common import Experts, Hindsight, with_overrides
from smoelib.policy.baselines.floor import floor_cost, warm_cost
from smoelib.policy.baselines.mmck import mmck
from smoelib.policy.baselines.sizing import QueueingSizer
from smoelib.settings import Settings
from tests.unit.tiny_pipeline import tiny_dag


@pytest.fixture
def dag(tmp_path):
    return tiny_dag(tmp_path)


def test_tail_latency_is_the_mmck_wait_quantile_plus_noisy_service(dag):
    s = Settings()
    sz = QueueingSizer(dag, s, s.baselines.queueing)
    cfg, sim = s.baselines.queueing, s.simulator
    i = int(np.flatnonzero((sz.share == 0.1) & (sz.conc == 2) & (sz.cpu == 1.0))[0])
    t, block = sz.tail_ms(np.array([300.0, 300.0]), np.array([100.0, 100.0]))
    # one call of 100 tokens at share 0.1 and 1 core (smoelib/core/service.py): handler 0.25 ms
    # + 100 x 3 KiB x 0.00015 ms serialisation, + the linear profile's flat 0.6 ms at
    # 1 / min(1, 0.1 / 0.4) and 100 x 0.002 ms at 1 / 0.1, x interference (1 + 0.1 x 0.9)
    svc = 0.25 + 100 * 3 * 0.00015 + (0.6 / 0.25 + 100 * 0.002 / 0.1) * 1.09
    mu = 1000.0 / svc
    for r in (1, 2):  # random spread: each replica an M/M/1/2 at 300 / r calls/s
        q = mmck(300.0 / r, mu, 1, 2)
        lam = 300.0 / r
        a = lam / mu
        p = np.array([1, a, a * a]) / (1 + a + a * a)
        pw = p[1] / (1 - p[2])
        wq = math.log(pw / cfg.tail) / (pw / q.mean_wait) if pw > cfg.tail else 0.0
        burst = (cfg.arrival_scv + sim.service_cv ** 2) / 2
        z = NormalDist().inv_cdf(1 - cfg.tail)
        assert t[0, i, r - 1] == pytest.approx(svc * (1 + z * sim.service_cv)
                                               + wq * burst * 1000.0, rel=1e-9)
        assert block[0, i, r - 1] == pytest.approx(q.p_block, rel=1e-9)


def test_sizer_picks_the_cheapest_feasible_configuration(dag):
    s = Settings()
    sz = QueueingSizer(dag, s, s.baselines.queueing)
    lam, tok = np.array([5.0, 5.0]), np.array([100.0, 100.0])
    plan = sz.plan(lam, tok, np.array([13.0, 13.0]))
    assert plan.feasible.all()
    assert plan.replicas.tolist() == [1, 1] and plan.gpu_share.tolist() == [0.1, 0.1]
    # the smallest memory choice that holds the runtime (1536 MiB) and the 9.4 MB of weights
    assert plan.cpu.tolist() == [0.5, 0.5] and plan.memory_mb.tolist() == [2048, 2048]
    # a budget only a larger share meets: the share rises, replicas stay at 1
    t, _ = sz.tail_ms(lam, tok)
    need = t[0, np.flatnonzero(sz.share == 0.5)[0], 0] + 1e-6
    plan = sz.plan(lam, tok, np.array([need, need]))
    assert plan.gpu_share.tolist() == [0.5, 0.5] and plan.replicas.tolist() == [1, 1]
    # heavy load: more replicas, never past replicas.max
    plan = sz.plan(np.array([3000.0, 1.0]), tok, np.array([10.0, 10.0]))
    assert plan.replicas[0] > 1 and plan.replicas[0] <= 20 and plan.replicas[1] == 1


def test_an_infeasible_budget_falls_back_to_the_fastest_share_the_gpus_can_hold(dag):
    s = with_overrides(Settings(), {"cluster.gpus": 1})
    sz = QueueingSizer(dag, s, s.baselines.queueing)
    plan = sz.plan(np.array([5.0, 5.0]), np.array([100.0, 100.0]), np.array([0.0, 0.0]))
    assert not plan.feasible.any()
    # one GPU, of which the two segments hold 0.25 each at their one replica: the two loaded
    # experts get at most a quarter each (a whole GPU each, the fastest, would not fit), and
    # the candidate refuses at most max_block of its calls
    assert plan.gpu_share.tolist() == [0.25, 0.25]
    assert (plan.replicas * plan.gpu_share).sum() <= 0.5 + 1e-9
    assert (plan.replicas >= 1).all()
    t, block = sz.tail_ms(np.array([5.0, 5.0]), np.array([100.0, 100.0]))
    r = plan.replicas - 1
    assert (block[[0, 1], plan.candidate, r] <= s.baselines.queueing.max_block).all()


def test_budget_splits_the_slo_after_segments_and_hops(dag):
    s = Settings()
    sz = QueueingSizer(dag, s, dataclasses.replace(s.baselines.queueing, slo_fraction=0.9))
    b = sz.budgets(tokens_per_s=np.array([100.0, 300.0]), segment_ms=np.array([2.0, 3.0]))
    # 0.9 x 40 - (2 + 3) - 3 hops x 0.5 = 29.5 ms; one layer on the path takes all of it
    assert b.tolist() == pytest.approx([29.5, 29.5])


def test_floor_on_a_hand_made_load(dag):
    s = Settings()
    ex = Experts(dag)
    # one 5 s tick: expert 0 gets 2 calls/s of 50 tokens each (100 tokens/s), expert 1 none
    future = Hindsight(dt=5.0, calls=np.array([[2.0, 0.0]]), tokens=np.array([[100.0, 0.0]]))
    # perfect batching: a call costs its handler (0.25 ms / min(1, cpu)), a token its
    # serialisation (3 KiB x 0.00015 ms / min(1, cpu)) and its share of the FFN's compute
    # (0.002 ms / share); priced per pod-hour at 2048 MiB, the cheapest (share, cpu) wins
    best = math.inf
    for share in s.actions.gpu_share:
        for cpu in s.actions.cpu:
            slow = 1 / min(1.0, cpu)
            busy_s = (10 * 0.25 * slow + 500 * (3 * 0.00015 * slow + 0.002 / share)) / 1000
            price_h = cpu * 0.031611 + 2.0 * 0.004237 + share * 0.56
            best = min(best, busy_s * price_h / 3600.0)
    assert floor_cost(ex, s, future) == pytest.approx(best, rel=1e-9)
    # the warm floor: one replica of the offered expert through the tick, at the cheapest pod
    # (0.5 cores, 2048 MiB, a 0.1 share); the expert offered nothing costs nothing
    cheapest_h = 0.5 * 0.031611 + 2.0 * 0.004237 + 0.1 * 0.56
    assert warm_cost(ex, s, future) == pytest.approx(5.0 * cheapest_h / 3600.0, rel=1e-9)


def test_elasticmoe_scales_by_whole_gpus_and_apportions_slots(dag):
    s = with_overrides(Settings(), {"baselines.elasticmoe.gpu_share": 0.1})
    d = get_decider("elasticmoe", dag=dag, settings=s)
    d.reset(0)
    assert d.slots_per_gpu == 10 and d.gpus == 1  # 2 experts fit on one GPU of 10 slots
    d.gpus = 1
    r = d._apportion(np.array([900.0, 100.0]))
    assert r.tolist() == [9, 1]  # EPLB: each next slot to the largest load per slot
    assert d.simulator_overrides["simulator.cold_start_median_s"] == 0.3


def test_queueing_calibration_relaxes_budgets_on_the_window_worst_p95_and_never_tightens(dag):
    s = with_overrides(Settings(), {"baselines.queueing.feedback_window_s": 60.0})
    cfg = s.baselines.queueing  # target 0.85, gain 0.5, at most 3x; the SLO is 40 ms
    d = get_decider("queueing", dag=dag, settings=s)
    d.reset(0)
    slo = 40.0  # the calibration reads P95 / SLO (smoelib.core.slo.slo_pressure)
    assert d.scale == 1.0
    d._calibrate(0.0, 8.5 / slo)  # P95 at a quarter of the target: x (34 / 8.5) ^ 0.5 = x 2
    assert d.scale == pytest.approx((cfg.feedback_target * 40 / 8.5) ** cfg.feedback_gain)
    assert d.scale == pytest.approx(2.0)
    d._calibrate(15.0, 8.5 / slo)  # capped at feedback_max
    assert d.scale == pytest.approx(cfg.feedback_max)
    d._calibrate(30.0, 136.0 / slo)  # 4x the target: x 0.5
    assert d.scale == pytest.approx(1.5)
    d._calibrate(45.0, 8.5 / slo)  # 136 ms is still the worst of the last 60 s: x 0.5 again
    assert d.scale == 1.0  # never tighter than the model
    d._calibrate(60.0, float("nan"))  # a window with no request: unchanged
    assert d.scale == 1.0
    d._calibrate(91.0, 34.0 / slo)  # 136 ms (t = 30) has left the window; 34 ms is on target
    assert d.scale == pytest.approx(1.0)
    d._calibrate(106.0, 8.5 / slo)  # the worst of (91, 34) and (106, 8.5) is 34 ms: x 1
    assert d.scale == pytest.approx(1.0)
    off = get_decider("queueing", dag=dag, settings=with_overrides(
        s, {"baselines.queueing.feedback_gain": 0.0}))
    off.reset(0)
    off._calibrate(0.0, 1.0)  # gain 0: the model alone
    assert off.scale == 1.0


def test_the_hindsight_sizers_read_their_own_settings_not_queueings(dag):
    """static-best's plan follows baselines.hindsight; queueing's tuned model does not move it."""
    future = Hindsight(dt=5.0, calls=np.full((12, 2), 400.0), tokens=np.full((12, 2), 4e4))

    def plan(overrides):
        d = get_decider("static-best", dag=dag, settings=with_overrides(Settings(), overrides))
        d.reset(0)
        d.see_future(future)
        return d.plan

    base = plan({})
    same = plan({"baselines.queueing.slo_fraction": 0.3, "baselines.queueing.tail": 0.001})
    tight = plan({"baselines.hindsight.slo_fraction": 0.3, "baselines.hindsight.tail": 0.001})
    for field in ("replicas", "gpu_share", "cpu", "concurrency"):
        assert np.array_equal(getattr(same, field), getattr(base, field))
    cost = lambda p: float(np.sum(p.replicas * (p.gpu_share + 0.05 * p.cpu)))  # noqa: E731
    assert cost(tight) > cost(base)  # a tighter budget buys more capacity
