"""Per-tick counters and latency histograms, binned by event time, as Prometheus would see them.

Counts (calls, tokens, 429s, busy seconds) are binned by the tick of the call's arrival;
latencies by the tick of completion (a completion computed ahead of time waits in its future
bin). Quantiles follow ``histogram_quantile``: linear interpolation inside the bucket.
"""

from __future__ import annotations

import numpy as np

__all__ = ["BUCKETS_S", "Telemetry", "histogram_quantile"]

BUCKETS_S = np.array([0.001, 0.0025, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.03, 0.05, 0.075, 0.1,
                      0.15, 0.2, 0.3, 0.5, 0.75, 1.0, 2.5, 5.0, 10.0, np.inf])
_NB = BUCKETS_S.size


def histogram_quantile(q: float, counts: np.ndarray) -> np.ndarray:
    """Quantile ``q`` of histograms ``counts[..., bucket]`` (non-cumulative) in seconds;
    NaN where a histogram is empty. The +Inf bucket answers the highest finite bound."""
    cum = np.cumsum(counts, axis=-1)
    total = cum[..., -1]
    rank = q * total
    idx = np.minimum((cum < rank[..., None]).sum(-1), _NB - 1)
    upper = BUCKETS_S[idx]
    lower = np.where(idx > 0, BUCKETS_S[np.maximum(idx - 1, 0)], 0.0)
    below = np.where(idx > 0, np.take_along_axis(cum, np.maximum(idx - 1, 0)[..., None],
                                                 -1)[..., 0], 0.0)
    inside = np.take_along_axis(counts, idx[..., None], -1)[..., 0]
    frac = np.where(inside > 0, (rank - below) / np.maximum(inside, 1e-12), 0.0)
    value = np.where(np.isinf(upper), lower, lower + (upper - lower) * frac)
    return np.where(total > 0, value, np.nan)


class Telemetry:
    """Per-tick bins for ``n_nodes`` nodes; ``interval_s`` the tick length."""

    COUNTERS = ("calls", "tokens", "rejected", "busy_s")

    def __init__(self, n_nodes: int, interval_s: float):
        self.n = n_nodes
        self.dt = interval_s
        self.bins: dict[int, dict[str, np.ndarray]] = {}
        self.totals = {k: np.zeros(n_nodes) for k in self.COUNTERS}
        self.totals["lat_hist"] = np.zeros((n_nodes, _NB))
        self.totals["lat_sum"] = np.zeros(n_nodes)
        self.totals["requests"] = np.zeros(1)
        self.totals["e2e_hist"] = np.zeros(_NB)
        self.totals["e2e_sum"] = np.zeros(1)

    def _bin(self, k: int) -> dict[str, np.ndarray]:
        b = self.bins.get(k)
        if b is None:
            b = {name: np.zeros(self.n) for name in self.COUNTERS}
            b["lat_hist"] = np.zeros((self.n, _NB))
            b["lat_sum"] = np.zeros(self.n)
            b["requests"] = np.zeros(1)
            b["e2e_hist"] = np.zeros(_NB)
            b["e2e_sum"] = np.zeros(1)
            self.bins[k] = b
        return b

    def add_counts(self, t: float, name: str, nodes: np.ndarray, values: np.ndarray) -> None:
        """Add ``values`` per ``nodes`` to counter ``name`` in the tick containing ``t``."""
        self._bin(int(t // self.dt))[name] += np.bincount(nodes, weights=values,
                                                          minlength=self.n)

    def add_latencies(self, done_s: np.ndarray, nodes: np.ndarray, lat_s: np.ndarray) -> None:
        if not done_s.size:
            return
        ticks = (done_s // self.dt).astype(np.int64)
        bucket = np.searchsorted(BUCKETS_S, lat_s, side="left")
        lo, hi = int(ticks.min()), int(ticks.max())
        for k in range(lo, hi + 1):
            m = ticks == k if hi > lo else slice(None)
            b = self._bin(int(k))
            flat = nodes[m] * _NB + bucket[m]
            b["lat_hist"] += np.bincount(flat, minlength=self.n * _NB).reshape(self.n, _NB)
            b["lat_sum"] += np.bincount(nodes[m], weights=lat_s[m], minlength=self.n)

    def add_requests(self, t: float, count: int) -> None:
        self._bin(int(t // self.dt))["requests"] += count

    def add_e2e(self, done_s: np.ndarray, lat_s: np.ndarray) -> None:
        ticks = (done_s // self.dt).astype(np.int64)
        bucket = np.searchsorted(BUCKETS_S, lat_s, side="left")
        for k in np.unique(ticks):
            m = ticks == k
            b = self._bin(int(k))
            b["e2e_hist"] += np.bincount(bucket[m], minlength=_NB)
            b["e2e_sum"] += lat_s[m].sum()

    def close(self, tick: int) -> dict[str, np.ndarray]:
        """Finish tick ``tick`` (add it to the running totals) and return its bin."""
        b = self._bin(tick)
        for k, v in b.items():
            self.totals[k] = self.totals[k] + v
        return b

    def window(self, last_tick: int, ticks: int) -> dict[str, np.ndarray]:
        """Sum of the closed bins ``last_tick - ticks + 1 .. last_tick``; drops older bins."""
        for k in [k for k in self.bins if k <= last_tick - ticks]:
            del self.bins[k]
        keys = [k for k in range(last_tick - ticks + 1, last_tick + 1) if k in self.bins]
        out = {name: sum((self.bins[k][name] for k in keys), np.zeros_like(v))
               for name, v in self._bin(last_tick).items()}
        return out
