"""Episode results as LLM serving reports them: TTFT and TPOT percentiles over requests, SLO
attainment, goodput, 60 s window violations, cost and counts.

**A dropped request has infinite latency**: its TTFT (when it never had a first token), its
TPOT and its end-to-end latency are infinite, it counts in every percentile and as a miss. A
request still running at the end of the drain is counted the same way (it did not finish; the
drain lasts until every request is done or, at most, as long as a request can take and still
meet its SLO: so an unfinished request has missed it for certain).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np

__all__ = ["Summary", "summarise", "window_series", "request_latencies", "WINDOW_S"]

WINDOW_S = 60.0


@dataclass(frozen=True)
class Summary:
    """Units: latencies ms, cost in the configured currency, durations s, goodput requests/s.

    ``slo_attainment``: share of requests that met both TTFT and TPOT SLOs; ``goodput`` those
    per second of the episode; ``slo_ratio`` the worse of P95 TTFT / TTFT SLO and P95 TPOT /
    TPOT SLO (inf when drops reach the P95); ``window_violation_rate``: share of 60 s windows
    (by arrival, windows with requests) whose attainment is below the target.
    """

    requests: int
    completed: int
    dropped: int
    ttft_p50_ms: float
    ttft_p95_ms: float
    ttft_p99_ms: float
    tpot_p50_ms: float
    tpot_p95_ms: float
    tpot_p99_ms: float
    ttft_slo_ms: float
    tpot_slo_ms: float
    attainment_target: float
    slo_attainment: float
    goodput: float
    slo_ratio: float
    window_violation_rate: float
    cost: float
    cold_starts: int
    rejected: int
    retries: int
    rollouts: int
    pods_replaced: int
    calls: int

    def as_dict(self) -> dict[str, float]:
        return asdict(self)


def request_latencies(env) -> dict[str, np.ndarray]:
    """Per request: ``ttft_ms``, ``tpot_ms`` (0 for requests without decode passes) and
    ``met`` (bool), inf / False for dropped or unfinished requests."""
    srv = env.server
    lost = srv.dropped | np.isnan(srv.e2e)
    ttft = np.where(lost & np.isnan(srv.ttft), np.inf, srv.ttft * 1000.0)
    ttft = np.where(np.isnan(ttft), np.inf, ttft)
    tpot = np.where(lost, np.inf, srv.tpot * 1000.0)
    met = srv.meets_slo(np.arange(srv.e2e.size))
    return {"ttft_ms": ttft, "tpot_ms": tpot, "met": met, "lost": lost}


def _pct(x: np.ndarray) -> np.ndarray:
    return (np.percentile(x, [50, 95, 99], method="higher") if x.size
            else np.full(3, np.nan))


def summarise(env) -> Summary:
    """The summary of a finished (or running) :class:`~smoelib.sim.env.SimEnv` episode."""
    lat = request_latencies(env)
    slo = env.dag.slo
    ttft, tpot = _pct(lat["ttft_ms"]), _pct(lat["tpot_ms"])
    n = lat["met"].size
    attained = float(lat["met"].mean()) if n else math.nan
    ratio = ttft[1] / slo.ttft_ms
    if slo.tpot_ms is not None:
        ratio = max(ratio, tpot[1] / slo.tpot_ms)
    windows = window_series(env)
    has = windows["requests"] > 0
    rate = float(windows["violation"][has].mean()) if has.any() else 0.0
    srv = env.server
    return Summary(
        requests=int(n), completed=int((~lat["lost"]).sum()), dropped=int(srv.dropped.sum()),
        ttft_p50_ms=float(ttft[0]), ttft_p95_ms=float(ttft[1]), ttft_p99_ms=float(ttft[2]),
        tpot_p50_ms=float(tpot[0]) if slo.tpot_ms is not None else math.nan,
        tpot_p95_ms=float(tpot[1]) if slo.tpot_ms is not None else math.nan,
        tpot_p99_ms=float(tpot[2]) if slo.tpot_ms is not None else math.nan,
        ttft_slo_ms=float(slo.ttft_ms),
        tpot_slo_ms=float(slo.tpot_ms) if slo.tpot_ms is not None else math.nan,
        attainment_target=float(slo.attainment), slo_attainment=attained,
        goodput=float(lat["met"].sum()) / max(env.duration_s, 1e-9), slo_ratio=float(ratio),
        window_violation_rate=rate, cost=float(env.cost),
        cold_starts=int(env.cluster.cold_starts), rejected=int(srv.rejected),
        retries=int(srv.retries), rollouts=int(env.rollouts),
        pods_replaced=int(env.cluster.replaced), calls=int(srv.calls))


def window_series(env) -> dict[str, np.ndarray]:
    """Per 60 s window (requests by arrival): start (s), requests, dropped, TTFT and TPOT
    P95 (ms, inf when drops reach them), attainment, violation (attainment below the target,
    0/1), cost, mean ready expert and segment replicas."""
    n_win = max(1, int(np.ceil(env.duration_s / WINDOW_S - 1e-9)))
    lat = request_latencies(env)
    win = np.minimum((env.trace.times_s // WINDOW_S).astype(np.int64), n_win - 1)
    out = {k: np.zeros(n_win) for k in ("requests", "dropped", "ttft_p95_ms", "tpot_p95_ms",
                                        "attainment", "violation", "cost", "expert_replicas",
                                        "segment_replicas")}
    out["t_s"] = np.arange(n_win) * WINDOW_S
    order = np.argsort(win, kind="stable")
    bounds = np.searchsorted(win[order], np.arange(n_win + 1))
    target = env.dag.slo.attainment
    for w in range(n_win):
        idx = order[bounds[w]:bounds[w + 1]]
        out["requests"][w] = idx.size
        out["dropped"][w] = env.server.dropped[idx].sum()
        for key in ("ttft_p95_ms", "tpot_p95_ms"):
            vals = lat[key.replace("_p95", "")][idx]
            out[key][w] = float(np.percentile(vals, 95, method="higher")) if idx.size \
                else np.nan
        att = float(lat["met"][idx].mean()) if idx.size else np.nan
        out["attainment"][w] = att
        out["violation"][w] = float(idx.size > 0 and att < target)
    if env.series:
        t = np.array([s["t_s"] for s in env.series])
        w_of = np.minimum((t // WINDOW_S).astype(np.int64), n_win - 1)
        cnt = np.maximum(np.bincount(w_of, minlength=n_win), 1)
        for key in ("cost", "expert_replicas", "segment_replicas"):
            v = np.array([s[key] for s in env.series])
            total = np.bincount(w_of, weights=v, minlength=n_win)
            out[key] = total if key == "cost" else total / cnt
    return out
