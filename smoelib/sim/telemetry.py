"""Per-tick counters and latency histograms, binned by event time, as Prometheus would see them.

Per node: calls, tokens and busy seconds binned by the tick their batch starts, 429s by the
tick of the refusal, call latencies by the tick of completion. Per pipeline: requests by
arrival; TTFT by the tick of the first token; TPOT, end-to-end latency and whether the SLO
was met by the tick the request ends or is dropped (a dropped request's TTFT and TPOT are
infinite: the +Inf bucket). Quantiles follow ``histogram_quantile``: linear interpolation
inside the bucket. The bounds are the metrics contract's (:mod:`smoelib.core.buckets`): coarse
per call, fine per pass.
"""

from __future__ import annotations

import numpy as np

from smoelib.core.buckets import CALL_BUCKETS_S, PASS_BUCKETS_S

__all__ = ["CALL_BOUNDS_S", "PASS_BOUNDS_S", "Telemetry", "histogram_quantile"]

CALL_BOUNDS_S = np.array(CALL_BUCKETS_S + (np.inf,))
"""A call latency histogram's bucket bounds, the +Inf bucket last."""
PASS_BOUNDS_S = np.array(PASS_BUCKETS_S + (np.inf,))
"""A pass (TTFT, TPOT, end-to-end) histogram's bucket bounds, the +Inf bucket last."""
_NB, _NP = CALL_BOUNDS_S.size, PASS_BOUNDS_S.size


def histogram_quantile(q: float, counts: np.ndarray, bounds: np.ndarray, *,
                       inf: bool = False) -> np.ndarray:
    """Quantile ``q`` of histograms ``counts[..., bucket]`` (non-cumulative) over the bucket
    ``bounds`` (:data:`CALL_BOUNDS_S` or :data:`PASS_BOUNDS_S`) in seconds; NaN where a
    histogram is empty. The +Inf bucket answers the highest finite bound (what Prometheus
    answers), or infinity with ``inf`` (a dropped request's latency)."""
    cum = np.cumsum(counts, axis=-1)
    total = cum[..., -1]
    rank = q * total
    idx = np.minimum((cum < rank[..., None]).sum(-1), bounds.size - 1)
    upper = bounds[idx]
    lower = np.where(idx > 0, bounds[np.maximum(idx - 1, 0)], 0.0)
    below = np.where(idx > 0, np.take_along_axis(cum, np.maximum(idx - 1, 0)[..., None],
                                                 -1)[..., 0], 0.0)
    inside = np.take_along_axis(counts, idx[..., None], -1)[..., 0]
    frac = np.where(inside > 0, (rank - below) / np.maximum(inside, 1e-12), 0.0)
    finite_upper = np.where(np.isinf(upper), lower, upper)
    value = np.where(np.isinf(upper), np.inf if inf else lower,
                     lower + (finite_upper - lower) * frac)
    return np.where(total > 0, value, np.nan)


class Telemetry:
    """Per-tick bins for ``n_nodes`` nodes; ``interval_s`` the tick length."""

    COUNTERS = ("calls", "tokens", "rejected", "busy_s", "batches")
    PIPELINE = ("requests", "e2e_sum", "slo_met", "slo_total", "dropped")
    HISTOGRAMS = ("e2e_hist", "ttft_hist", "tpot_hist")

    def __init__(self, n_nodes: int, interval_s: float):
        self.n = n_nodes
        self.dt = interval_s
        self.bins: dict[int, dict[str, np.ndarray]] = {}
        self.totals = {k: np.zeros(n_nodes) for k in self.COUNTERS}
        self.totals["lat_hist"] = np.zeros((n_nodes, _NB))
        self.totals["lat_sum"] = np.zeros(n_nodes)
        for k in self.PIPELINE:
            self.totals[k] = np.zeros(1)
        for k in self.HISTOGRAMS:
            self.totals[k] = np.zeros(_NP)

    def _bin(self, k: int) -> dict[str, np.ndarray]:
        b = self.bins.get(k)
        if b is None:
            b = {name: np.zeros(self.n) for name in self.COUNTERS}
            b["lat_hist"] = np.zeros((self.n, _NB))
            b["lat_sum"] = np.zeros(self.n)
            for name in self.PIPELINE:
                b[name] = np.zeros(1)
            for name in self.HISTOGRAMS:
                b[name] = np.zeros(_NP)
            self.bins[k] = b
        return b

    def _ticks(self, t_s: np.ndarray, *, mask: bool = False):
        """``(tick, selection)`` for each tick the times ``t_s`` fall in: most slices fall in
        one tick, selected whole (a boolean mask when ``mask``)."""
        if not t_s.size:
            return
        ticks = (t_s // self.dt).astype(np.int64)
        lo, hi = int(ticks.min()), int(ticks.max())
        if lo == hi:
            yield lo, (np.ones(t_s.size, bool) if mask else slice(None))
            return
        for k in range(lo, hi + 1):
            m = ticks == k
            if m.any():
                yield k, m

    def add_tick(self, k: int, arrays: dict[str, np.ndarray]) -> None:
        """Add per-node counters (and ``lat_hist``) already summed over tick ``k``."""
        b = self._bin(k)
        for name, v in arrays.items():
            b[name] += v

    def add_binned(self, t_s: np.ndarray, name: str, nodes: np.ndarray, values: np.ndarray
                   ) -> None:
        """Add ``values`` per ``nodes`` to counter ``name``, each in the tick of its ``t_s``."""
        for k, m in self._ticks(t_s):
            self._bin(k)[name] += np.bincount(nodes[m], weights=values[m], minlength=self.n)

    def add_pass_latency(self, t_s: np.ndarray, name: str, lat_s: np.ndarray) -> None:
        """A pipeline latency histogram (``ttft_hist``) per event at ``t_s``."""
        bucket = np.searchsorted(PASS_BOUNDS_S, lat_s, side="left")
        for k, m in self._ticks(t_s):
            self._bin(k)[name] += np.bincount(bucket[m], minlength=_NP)

    def add_request_ends(self, t_s: np.ndarray, *, ttft: np.ndarray, tpot: np.ndarray,
                         e2e: np.ndarray, met: np.ndarray) -> None:
        """Requests that finished or were dropped at ``t_s`` (seconds; inf when dropped):
        TPOT and end-to-end histograms, SLO met and total, drops. ``ttft`` is NaN for a
        request that never had a first token: a dropped one joins the TTFT histogram's +Inf
        bucket here."""
        drop = ~np.isfinite(e2e)
        for k, m in self._ticks(t_s, mask=True):
            b = self._bin(k)
            b["tpot_hist"] += np.bincount(np.searchsorted(PASS_BOUNDS_S, tpot[m]),
                                          minlength=_NP)
            b["e2e_hist"] += np.bincount(np.searchsorted(PASS_BOUNDS_S, e2e[m]), minlength=_NP)
            b["e2e_sum"] += e2e[m & ~drop].sum()
            b["slo_met"] += met[m].sum()
            b["slo_total"] += m.sum()
            b["dropped"] += (m & drop).sum()
            first_missing = m & drop & np.isnan(ttft)
            b["ttft_hist"][-1] += first_missing.sum()

    def add_latencies(self, done_s: np.ndarray, nodes: np.ndarray, lat_s: np.ndarray) -> None:
        if not done_s.size:
            return
        bucket = np.searchsorted(CALL_BOUNDS_S, lat_s, side="left")
        for k, m in self._ticks(done_s):
            b = self._bin(k)
            flat = nodes[m] * _NB + bucket[m]
            b["lat_hist"] += np.bincount(flat, minlength=self.n * _NB).reshape(self.n, _NB)
            b["lat_sum"] += np.bincount(nodes[m], weights=lat_s[m], minlength=self.n)

    def add_requests(self, t: float, count: int) -> None:
        self._bin(int(t // self.dt))["requests"] += count

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
