"""How an observation compares with the pipeline's SLO: one rule for the guards' pressure hold
and ``queueing``'s calibration. Pure.
"""

from __future__ import annotations

import math
from typing import Any

__all__ = ["slo_pressure", "shows_drops"]


def slo_pressure(observation: Any, *, slo_ms: float) -> float:
    """The observed latency as a fraction of its SLO: the end-to-end P95 over ``slo_ms``
    (NaN when the window completed no request). When the observation carries per-pass
    latencies (TTFT, TPOT) the pipeline states SLOs for, they join here, the worst ratio
    winning."""
    p95 = float(observation.p95_ms)
    return p95 / slo_ms if math.isfinite(p95) and slo_ms > 0 else math.nan


def shows_drops(observation: Any) -> bool:
    """Whether the observation shows dropped requests (a dropped request has infinite latency,
    so any drop is SLO pressure); unknown (NaN) is not a drop."""
    d = float(observation.dropped_per_s)
    return math.isfinite(d) and d > 0
