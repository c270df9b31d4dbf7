"""How an observation compares with the pipeline's SLO: one rule for the guards' pressure hold
and ``queueing``'s calibration; the overrun a tick's reward pays for. Pure.
"""

from __future__ import annotations

import math
from typing import Any

__all__ = ["slo_pressure", "shows_drops", "pressure_text", "overrun", "MAX_OVERRUN"]

MAX_OVERRUN = 5.0
"""An overrun (fraction of the SLO) is capped here: one bad tick, a bounded reward."""


def _ratios(observation: Any, slo: Any) -> list[tuple[str, float, float]]:
    out = []
    for name, value, bound in (("TTFT", observation.ttft_p95_ms, slo.ttft_ms),
                               ("TPOT", observation.tpot_p95_ms, slo.tpot_ms)):
        v = float(value)
        if bound is not None and math.isfinite(v) and bound > 0:
            out.append((name, v, v / bound))
    return out


def slo_pressure(observation: Any, *, slo: Any) -> float:
    """The observed latency as a fraction of its SLO: the worst of P95 TTFT / ``ttft_ms`` and
    P95 TPOT / ``tpot_ms`` among those the observation knows (``slo`` a pipeline's
    :class:`~smoelib.pipeline.model.SLO`); NaN when it knows neither (a window without a
    finished request, or a source without the per-pass series)."""
    ratios = _ratios(observation, slo)
    return max(r for _, _, r in ratios) if ratios else math.nan


def pressure_text(observation: Any, *, slo: Any) -> str:
    """The latency behind :func:`slo_pressure`, for a note: ``P95 TPOT 41.0 ms (0.82 of the
    SLO)``."""
    ratios = _ratios(observation, slo)
    if not ratios:
        return "no latency measured"
    name, value, ratio = max(ratios, key=lambda x: x[2])
    return f"P95 {name} {value:.1f} ms ({ratio:.2f} of the SLO)"


def shows_drops(observation: Any) -> bool:
    """Whether the observation shows dropped requests (a dropped request has infinite latency,
    so any drop is SLO pressure); unknown (NaN) is not a drop."""
    d = float(observation.dropped_per_s)
    return math.isfinite(d) and d > 0


def overrun(parts: Any, attainment: float) -> float:
    """One tick's SLO overrun (``parts`` a simulator tick's ``RewardParts``):
    ``max(0, ratio - 1)`` of the requests that ended in the tick (``ratio`` the worse of P95
    TTFT and TPOT over their SLOs; inf, so capped, when drops reach the P95) plus the share of
    requests that missed the SLO beyond what the ``attainment`` target allows; capped at
    :data:`MAX_OVERRUN`."""
    ratio = parts.slo_ratio
    over = 0.0 if math.isnan(ratio) else max(0.0, min(ratio, MAX_OVERRUN + 1.0) - 1.0)
    if parts.requests > 0:
        over += max(0.0, parts.violations / parts.requests - (1.0 - attainment))
    return min(over, MAX_OVERRUN)
