"""Closed-form queueing results against hand-computed numbers."""

from __future__ import annotations

import math

import numpy as np
import pytest

from smoelib.queueing import allen_cunneen_wait, apportion_replicas, erlang_c, mmck


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
