"""The latency histograms' bucket bounds (seconds), one place for the metrics contract, the
instrument helper and the simulator's telemetry.

``histogram_quantile`` interpolates linearly inside a bucket, so a bucket's width is the error a
quantile can carry. A pass latency decides SLO pressure (P95 over ``guards.pressure_threshold``
of the SLO holds every scale-down, and the ``queueing`` calibration and the learned policy's
reward read it), so the pass histograms (TTFT, TPOT, end to end) are fine: at most 14 % from
one bound to the next, 1 ms to 56 s, about a hundred series per pipeline. With the coarser call
buckets a TPOT of 31 ms, all of it inside (30 ms, 50 ms], read as a P95 of 49 ms: 0.98 of a
50 ms SLO, so the pressure hold never let go. The call histograms (one per expert: thousands of
series at DeepSeek-V3 size) stay coarse, with bounds below a millisecond, where a GPU expert's
decode call lies.
"""

from __future__ import annotations

__all__ = ["CALL_BUCKETS_S", "PASS_BUCKETS_S"]

CALL_BUCKETS_S: tuple[float, ...] = (
    0.0001, 0.00025, 0.0005, 0.00075, 0.001, 0.0025, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.03,
    0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0)
"""Bounds of an expert's or segment's call latency histogram."""

_MANTISSAS = (1.0, 1.1, 1.2, 1.3, 1.4, 1.5, 1.6, 1.8, 2.0, 2.2, 2.5, 2.8, 3.0, 3.3, 3.6, 4.0,
              4.5, 5.0, 5.6, 6.3, 7.1, 8.0, 9.0)

PASS_BUCKETS_S: tuple[float, ...] = tuple(
    round(m * 10.0 ** e, 6) for e in range(-3, 2) for m in _MANTISSAS if m * 10.0 ** e <= 56.0)
"""Bounds of a pipeline's TTFT, TPOT and end-to-end latency histograms."""
