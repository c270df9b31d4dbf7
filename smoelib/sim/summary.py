"""Episode results: request latency percentiles, 60 s window violations, cost, counts."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

__all__ = ["Summary", "summarise", "window_series", "WINDOW_S"]

WINDOW_S = 60.0


@dataclass(frozen=True)
class Summary:
    """Units: latencies ms, cost in the configured currency, durations s.

    ``window_violation_rate``: fraction of 60 s windows (by arrival time, windows with at least
    one request) whose P95 exceeds the SLO; dropped or unfinished requests count as over.
    """

    requests: int
    completed: int
    dropped: int
    p50_ms: float
    p95_ms: float
    p99_ms: float
    slo_ms: float
    window_violation_rate: float
    cost: float
    cold_starts: int
    rejected: int
    retries: int
    rollouts: int
    pods_replaced: int

    def as_dict(self) -> dict[str, float]:
        return asdict(self)


def _latencies_ms(env) -> np.ndarray:
    """Per request latency in ms; inf for dropped or unfinished requests."""
    lat = env.server.e2e * 1000.0
    return np.where(env.server.dropped | np.isnan(lat), np.inf, lat)


def summarise(env) -> Summary:
    """The summary of a finished (or running) :class:`~smoelib.sim.env.SimEnv` episode."""
    lat = _latencies_ms(env)
    ok = lat[np.isfinite(lat)]
    pct = np.percentile(ok, [50, 95, 99]) if ok.size else np.full(3, np.nan)
    windows = window_series(env)
    has = windows["requests"] > 0
    rate = float(windows["violation"][has].mean()) if has.any() else 0.0
    return Summary(
        requests=int(lat.size), completed=int(ok.size),
        dropped=int(env.server.dropped.sum()), p50_ms=float(pct[0]), p95_ms=float(pct[1]),
        p99_ms=float(pct[2]), slo_ms=float(env.dag.slo_ms), window_violation_rate=rate,
        cost=float(env.cost), cold_starts=int(env.cluster.cold_starts),
        rejected=int(env.server.rejected), retries=int(env.server.retries),
        rollouts=int(env.rollouts), pods_replaced=int(env.cluster.replaced))


def window_series(env) -> dict[str, np.ndarray]:
    """Per 60 s window: start (s), requests, dropped, p95 (ms, inf if any request of the top
    5 % was dropped), violation (0/1), cost, mean ready expert and segment replicas."""
    n_win = max(1, int(np.ceil(env.duration_s / WINDOW_S - 1e-9)))
    lat = _latencies_ms(env)
    win = np.minimum((env.trace.times_s // WINDOW_S).astype(np.int64), n_win - 1)
    out = {k: np.zeros(n_win) for k in ("requests", "dropped", "p95_ms", "violation", "cost",
                                        "expert_replicas", "segment_replicas")}
    out["t_s"] = np.arange(n_win) * WINDOW_S
    order = np.argsort(win, kind="stable")
    bounds = np.searchsorted(win[order], np.arange(n_win + 1))
    for w in range(n_win):
        vals = lat[order[bounds[w]:bounds[w + 1]]]
        out["requests"][w] = vals.size
        out["dropped"][w] = np.isinf(vals).sum()
        p95 = float(np.percentile(vals, 95, method="higher")) if vals.size else np.nan
        out["p95_ms"][w] = p95
        out["violation"][w] = float(vals.size > 0 and p95 > env.dag.slo_ms)
    if env.series:
        t = np.array([s["t_s"] for s in env.series])
        w_of = np.minimum((t // WINDOW_S).astype(np.int64), n_win - 1)
        cnt = np.maximum(np.bincount(w_of, minlength=n_win), 1)
        for key in ("cost", "expert_replicas", "segment_replicas"):
            v = np.array([s[key] for s in env.series])
            total = np.bincount(w_of, weights=v, minlength=n_win)
            out[key] = total if key == "cost" else total / cnt
    return out
