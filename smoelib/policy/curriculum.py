"""Which scenario each training update runs: pipeline, trace, seed and episode length.

Decima's curriculum, adapted: episodes lengthen over the first updates (short episodes give
many cheap updates while the policy is poor), and pipelines enter smallest first (fewest
experts), so early updates are fast and later ones see every pipeline. Every draw is a
function of ``(seed, update)`` alone, with its own ``numpy`` generator: a resumed run draws the
same scenarios as an uninterrupted one.

The data split (DESIGN.md, "Traces"): training may use ``conv-train`` and the synthetic traces
with seeds below 1000; :func:`split_problems` refuses anything else.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from smoelib.errors import Problem

__all__ = ["TRAIN_TRACES", "EVAL_SEED_START", "Scenario", "split_problems", "scenarios",
           "log_uniform",
           "validation_scenarios"]

TRAIN_TRACES: tuple[str, ...] = ("conv-train", "poisson", "bursty", "diurnal", "spike")
"""the traces training may see: conv's training minutes and the synthetic generators"""
EVAL_SEED_START = 1000
"""seeds from here on are the evaluation split's"""


@dataclass(frozen=True)
class Scenario:
    """One episode's input: its rollouts share it (common random numbers). ``rate_scale``
    multiplies the config's request rate (``simulator.rate_scale``)."""

    pipeline: str
    trace: str
    seed: int
    duration_s: float
    rate_scale: float = 1.0


def split_problems(traces: tuple[str, ...] | list[str], seeds: tuple[int, int]) -> list[Problem]:
    """Every way ``traces`` and the seed range ``[lo, hi)`` would touch evaluation data."""
    p = [Problem("traces", f"{t!r} is not a training trace (allowed: {', '.join(TRAIN_TRACES)}; "
                           "conv-eval, conv and CSV files are never trained on)")
         for t in traces if t not in TRAIN_TRACES]
    lo, hi = seeds
    if not 0 <= lo < hi <= EVAL_SEED_START:
        p.append(Problem("seeds", f"range [{lo}, {hi}) must lie in [0, {EVAL_SEED_START}): "
                                  f"seeds >= {EVAL_SEED_START} are the evaluation split's"))
    if not traces:
        p.append(Problem("traces", "needs at least one training trace"))
    return p


def log_uniform(rng: np.random.Generator, bounds: tuple[float, float]) -> float:
    """A draw log-uniform on ``[lo, hi]`` (``lo`` itself when they are equal): rate factors."""
    lo, hi = bounds
    return float(math.exp(rng.uniform(math.log(lo), math.log(hi)))) if hi > lo else float(lo)


def _episode_s(update: int, *, start_s: float, end_s: float, ramp: int, tick_s: float) -> float:
    frac = 1.0 if ramp <= 0 else min(1.0, update / ramp)
    return max(tick_s, math.floor((start_s + frac * (end_s - start_s)) / tick_s) * tick_s)


def scenarios(update: int, *, pipelines: list[str], sizes: list[int], traces: tuple[str, ...],
              seeds: tuple[int, int], seed: int, start_s: float, end_s: float, ramp: int,
              tick_s: float, count: int = 1, rate_scales: tuple[float, float] = (1.0, 1.0)
              ) -> list[Scenario]:
    """The ``count`` scenarios of PPO update ``update``: one pipeline, one episode length.

    Args:
        pipelines, sizes: pipeline paths and their expert counts.
        traces, seeds: the training split (already checked).
        seed: the run's seed.
        start_s, end_s, ramp: episode length grows linearly from ``start_s`` to ``end_s``
            over ``ramp`` updates (s, s, updates); pipelines enter smallest first over the
            same ramp.
        tick_s: the control interval (episodes are whole ticks).
        count: scenarios drawn (each its own trace, seed and rate).
        rate_scales: ``(lo, hi)``: each scenario's rate factor is log-uniform on it.
    """
    rng = np.random.default_rng([seed, update, 0x5C])
    by_size = [p for _, p in sorted(zip(sizes, pipelines, strict=True))]
    frac = 1.0 if ramp <= 0 else min(1.0, (update + 1) / ramp)
    open_ = by_size[:max(1, math.ceil(frac * len(by_size)))]
    pipeline = open_[int(rng.integers(len(open_)))]
    duration = _episode_s(update, start_s=start_s, end_s=end_s, ramp=ramp, tick_s=tick_s)
    return [Scenario(pipeline=pipeline, trace=traces[int(rng.integers(len(traces)))],
                     seed=int(rng.integers(*seeds)), duration_s=duration,
                     rate_scale=log_uniform(rng, rate_scales))
            for _ in range(count)]


def validation_scenarios(pipelines: list[str], *, traces: tuple[str, ...], seed: int,
                         duration_s: float) -> list[Scenario]:
    """Fixed held-out training-split scenarios for checkpoint selection: every pipeline on
    ``conv-train`` and on the burstiest training trace available, one seed (below 1000)."""
    picked = [t for t in ("conv-train", "spike", "bursty") if t in traces][:2] or [traces[0]]
    return [Scenario(p, t, seed, duration_s) for p in pipelines for t in picked]
