"""Closed-form queueing results against hand-computed numbers."""

from __future__ import annotations

import math

import numpy as np
import pytest

from smoelib.policy.baselines.mmck import allen_cunneen_wait, apportion_replicas, erlang_c, mmck


def test_mm1k_matches_the_textbook_formula():
    lam, mu, k = 0.8, 1.0, 4
    rho = lam / mu
    p_block = (1 - rho) * rho**k / (1 - rho ** (k + 1))
    q = mmck(lam, mu, 1, k)
    assert q.p_block == pytest.approx(p_block, rel=1e-12)
    length = rho / (1 - rho) - (k + 1) * rho ** (k + 1) / (1 - rho ** (k + 1))
    assert q.mean_in_system == pytest.approx(length, rel=1e-12)
    assert q.mean_response == pytest.approx(length / (lam * (1 - p_block)), rel=1e-12)


def test_mm2k_by_hand():
    # c = 2, K = 3, a = 1: p ~ [1, 1, 1/2, 1/4] -> P0 = 4/11
    q = mmck(1.0, 1.0, 2, 3)
    assert q.p_block == pytest.approx((1 / 4) / (11 / 4))
    assert q.mean_queue == pytest.approx((1 / 4) / (11 / 4))
    assert q.mean_in_system == pytest.approx((1 + 2 * 0.5 + 3 * 0.25) / (11 / 4))


def test_large_capacity_approaches_mmc():
    q = mmck(1.5, 1.0, 2, 400)
    c = erlang_c(1.5, 1.0, 2)
    assert q.p_block < 1e-12
    assert q.mean_wait == pytest.approx(c / (2 * 1.0 - 1.5), rel=1e-9)


def test_erlang_c_by_hand_and_unstable():
    assert erlang_c(1.0, 1.0, 2) == pytest.approx(1 / 3)
    assert erlang_c(3.0, 1.0, 2) == 1.0
    assert allen_cunneen_wait(3.0, 1.0, 2) == math.inf


def test_allen_cunneen_scales_with_burstiness():
    base = allen_cunneen_wait(1.0, 1.0, 2)
    assert base == pytest.approx((1 / 3) / (2 - 1))
    assert allen_cunneen_wait(1.0, 1.0, 2, ca2=3.0, cs2=1.0) == pytest.approx(2 * base)


def test_mmck_refuses_bad_parameters():
    with pytest.raises(ValueError):
        mmck(1.0, 1.0, 2, 1)
    assert mmck(0.0, 2.0, 1, 1).mean_response == 0.5


def test_apportion_gives_each_replica_to_the_largest_load_per_replica():
    # loads 90, 132, 40 over 6 replicas: 1 each, then 132 -> 2 (66), 90 -> 2 (45),
    # 132 -> 3 (44)
    assert apportion_replicas(np.array([90, 132, 40]), 6).tolist() == [2, 3, 1]
    assert apportion_replicas(np.array([0, 10]), 3).tolist() == [0, 3]
    with pytest.raises(ValueError):
        apportion_replicas(np.array([1, 1]), 1)


# ---- batched M/M/c/K, the wait tail, EPLB -----------------------------------------------------
from smoelib.policy.baselines.mmck import balanced_packing, eplb_plan, mmck_batch, wait_quantile  # noqa: E402


@pytest.mark.parametrize("lam, mu, c, k", [(0.8, 1.0, 1, 4), (1.0, 1.0, 2, 3), (1.5, 1.0, 2, 40),
                                           (50.0, 1.0, 1, 16), (0.0, 2.0, 1, 2)])
def test_mmck_batch_matches_the_scalar_formula(lam, mu, c, k):
    b = mmck_batch(np.array([lam]), np.array([mu]), c, np.array([k]))
    q = mmck(lam, mu, c, k)
    assert b["p_block"][0] == pytest.approx(q.p_block, abs=1e-12)
    assert b["mean_wait"][0] == pytest.approx(q.mean_wait, abs=1e-12)


def test_mm1k_wait_probability_by_hand():
    # M/M/1/4 at rho 0.5: p_n ~ 1, .5, .25, .125, .0625 (sum 1.9375); an admitted call waits
    # when it finds 1..3 in flight: (.5 + .25 + .125) / (1.9375 - .0625)
    b = mmck_batch(np.array([0.5]), np.array([1.0]), 1, np.array([4]))
    assert b["p_wait"][0] == pytest.approx(0.875 / 1.875)


def test_wait_quantile_is_exact_for_mm1():
    # M/M/1: P(W > t) = rho exp(-(mu - lam) t); mean wait rho / (mu - lam)
    lam, mu, tail = 0.5, 1.0, 0.01
    q = wait_quantile(np.array([0.5]), np.array([0.5 / (mu - lam)]), tail)
    assert q[0] == pytest.approx(math.log(0.5 / tail) / (mu - lam))
    assert wait_quantile(np.array([0.005]), np.array([1.0]), tail)[0] == 0.0


def test_balanced_packing_by_hand():
    pack, rank = balanced_packing(np.array([5.0, 1.0, 4.0, 2.0]), 2)
    # heaviest first: 5 -> pack 0, 4 -> pack 1, 2 -> pack 1 (lighter), 1 -> pack 0 (room)
    assert pack.tolist() == [0, 0, 1, 1]
    assert rank.tolist() == [0, 1, 0, 1]


def test_eplb_reproduces_the_readme_example():
    # deepseek-ai/EPLB README: 2 layers x 12 experts, 16 replicas, 4 groups, 2 nodes, 8 GPUs
    weight = [[90, 132, 40, 61, 104, 165, 39, 4, 73, 56, 183, 86],
              [20, 107, 104, 64, 19, 197, 187, 157, 172, 86, 16, 27]]
    expected = [[5, 6, 5, 7, 8, 4, 3, 4, 10, 9, 10, 2, 0, 1, 11, 1],
                [7, 10, 6, 8, 6, 11, 8, 9, 2, 4, 5, 1, 5, 0, 3, 1]]
    for w, phy2log in zip(weight, expected, strict=True):
        got, count = eplb_plan(np.array(w), 16, groups=4, nodes=2, gpus=8)
        assert got.tolist() == phy2log
        assert count.tolist() == np.bincount(phy2log, minlength=12).tolist()
    # the replication step alone: the hot experts of layer 0 get the 4 extra replicas
    assert eplb_plan(np.array(weight[0]), 16, groups=4, nodes=2, gpus=8)[1].tolist() == \
        [1, 2, 1, 1, 2, 2, 1, 1, 1, 1, 2, 1]
