"""smoelib.sim.borrow: a jitted entry hands its arrays on without counting references, and
the work reads and writes the caller's own memory."""

from __future__ import annotations

import sys

import numpy as np
import pytest
from numba import njit
from numba.core.errors import TypingError

from smoelib.sim.borrow import borrowed


@njit
def _work(a, b, k, view):
    for i in range(a.size):
        a[i] += b[i] * k
    view[0] = -1.0
    return a.sum(), np.empty(3).size  # an array made inside still counts its own references


@njit
def _entry(*args):
    return _work(*borrowed(args))


def test_the_work_writes_the_callers_arrays_and_passes_scalars_through():
    a, b = np.arange(5.0), np.ones(5)
    base = np.zeros((2, 3))
    column = base[:, 1]  # not contiguous
    before = sys.getrefcount(a), sys.getrefcount(b), sys.getrefcount(base)
    total, made = _entry(a, b, 2.0, column)
    assert total == 20.0 and made == 3
    np.testing.assert_array_equal(a, [2.0, 3.0, 4.0, 5.0, 6.0])
    assert base[0, 1] == -1.0 and base.sum() == -1.0
    assert (sys.getrefcount(a), sys.getrefcount(b), sys.getrefcount(base)) == before


def test_only_a_tuple_is_borrowed():
    @njit
    def bad(a):
        return borrowed(a)

    with pytest.raises(TypingError):
        bad(np.zeros(2))
