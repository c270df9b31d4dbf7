"""``queueing`` (EWMA forecasts; settings ``baselines.queueing``), ``oracle`` (the true
future load), ``static-peak`` (the episode's peak load, default vertical configuration),
``static-best`` (one configuration per expert for the whole episode, the cheapest the model
finds feasible at the episode's peak, with hindsight) and ``static-mean`` (the same, sized for
the mean load); the last four read ``baselines.hindsight``. All are sized by
:class:`~smoelib.policy.baselines.sizing.QueueingSizer`. docs/baselines.md says what each models.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from smoelib.core.slo import slo_pressure
from smoelib.policy.base import register
from smoelib.policy.baselines.common import PASS_THROUGH, Hindsight, decide_all, on_period
from smoelib.policy.baselines.sizing import QueueingSizer

__all__ = ["QueueingDecider", "OracleDecider", "StaticPeakDecider", "StaticBestDecider",
           "StaticMeanDecider"]


class _Sized:
    """Shared: the sizer, the slow-knob hysteresis, the scale-down delay, the decision. The
    sizer's settings are ``settings.baselines.<section>``."""

    simulator_overrides = PASS_THROUGH
    section = "queueing"

    def __init__(self, *, dag, settings):
        self.s, self.cfg = settings, getattr(settings.baselines, self.section)
        self.sizer = QueueingSizer(dag, settings, self.cfg)
        self.ex = self.sizer.ex
        self.dt = settings.control.interval_s

    def reset(self, seed: int) -> None:
        ex, sz = self.ex, self.sizer
        n = len(ex)
        self.current = np.full(n, -1)
        for i in range(n):  # the pipeline default, if it is a candidate
            hit = np.flatnonzero(np.isclose(sz.share, ex.default["gpu_share"][i])
                                 & (sz.conc == ex.default["concurrency"][i]))
            self.current[i] = hit[0] if hit.size and math.isclose(
                sz.cpu[hit[0]], ex.default["cpu"][i]) else -1
        self.changed_at = np.full(n, -math.inf)
        self.recent: list[np.ndarray] = []
        self.seg_ms = np.zeros(sz.path_segments.size)
        self.last = None
        self.scale = 1.0  # the budget calibration (see _calibrate)
        self.p95_seen: list[tuple[float, float]] = []  # (time, P95 / SLO) at each plan

    def _segments(self, obs) -> np.ndarray:
        seen = np.asarray(obs.latency_p95_ms)[self.sizer.path_segments]
        a = 1.0 - math.exp(-self.dt / self.cfg.ewma_fast_s)
        self.seg_ms = np.where(np.isnan(seen), self.seg_ms, (1 - a) * self.seg_ms + a * seen)
        return self.seg_ms

    def _calibrate(self, t: float, pressure: float) -> None:
        """Relax the model's budgets by ``(target x SLO / worst P95) ^ gain`` per plan, kept
        within ``[1, feedback_max]``, where the worst P95 is the highest measured in the last
        ``feedback_window_s``: the model's per-call tail bounds, summed over the layers,
        overstate the end-to-end P95 when it stays far below the SLO; one burst in the window
        keeps the budgets tight. ``pressure`` is the observed latency over its SLO
        (:func:`smoelib.core.slo.slo_pressure`). Never tighter than the model: a tighter budget
        under a burst buys bigger GPU shares, and each share change rolls the expert's pods
        (cold starts) just when capacity is short."""
        cfg = self.cfg
        if cfg.feedback_gain <= 0 or not math.isfinite(pressure) or pressure <= 0:
            return
        self.p95_seen = [(s, p) for s, p in self.p95_seen if s > t - cfg.feedback_window_s]
        self.p95_seen.append((t, pressure))
        ratio = cfg.feedback_target / max(p for _, p in self.p95_seen)
        self.scale = float(np.clip(self.scale * ratio ** cfg.feedback_gain, 1.0,
                                   cfg.feedback_max))

    def _choose(self, obs, lam: np.ndarray, tokens: np.ndarray, tokens_per_s: np.ndarray,
                segment_ms: np.ndarray, *, delay_s: float):
        # a replica target takes effect only at a KEDA poll (from zero) or an HPA sync: plan
        # there (and whenever the last plan is missing); in between, repeat the last decision
        t, sim = float(obs.time_s), self.s.simulator
        if self.last is not None and not on_period(t, sim.hpa_sync_s):
            return dataclasses.replace(self.last, updated_at=t)
        self._calibrate(t, slo_pressure(obs, slo=self.ex.slo))
        self.last = self._plan(t, lam, tokens, tokens_per_s, segment_ms, delay_s=delay_s)
        return self.last

    def _plan(self, t: float, lam: np.ndarray, tokens: np.ndarray, tokens_per_s: np.ndarray,
              segment_ms: np.ndarray, *, delay_s: float):
        sz, cfg = self.sizer, self.cfg
        budget = sz.budgets(tokens_per_s=tokens_per_s, segment_ms=segment_ms) * self.scale
        tail = sz.tail_ms(lam, tokens)
        free = sz.plan(lam, tokens, budget, tail=tail)
        kept = sz.plan(lam, tokens, budget, keep=self.current, tail=tail)
        cost = lambda p: p.replicas * sz.price[np.arange(len(p.replicas)), p.candidate]  # noqa: E731
        due = t - self.changed_at >= cfg.reconfigure_s
        move = ((self.current < 0) | (~kept.feasible & free.feasible)
                | (due & (cost(free) < (1 - cfg.reconfigure_saving) * cost(kept))))
        pick = lambda a, b: np.where(move, a, b)  # noqa: E731
        cand = pick(free.candidate, kept.candidate)
        replicas = pick(free.replicas, kept.replicas)
        self.changed_at = np.where(move & (cand != self.current), t, self.changed_at)
        self.recent = [np.where(move & (cand != self.current), replicas, r) for r in self.recent]
        self.current = cand
        keep_n = int(round(delay_s / self.s.simulator.hpa_sync_s)) + 1
        self.recent = (self.recent + [replicas])[-keep_n:]
        replicas = np.max(np.stack(self.recent), axis=0)
        return decide_all(self.ex, t, replicas=replicas, cpu=sz.cpu[cand],
                          memory_mb=sz.memory_mb, gpu_share=sz.share[cand],
                          concurrency=sz.conc[cand])


@register("queueing")
class QueueingDecider(_Sized):
    """Queueing sizing on EWMA forecasts: ``lam = max(fast, slow EWMA) x (1 + headroom)`` of
    the observed calls per second (served plus 429s); replicas are held at their highest of the
    last ``scale_down_delay_s``. Before the first observed call every expert gets one replica
    at the cheapest configuration.
    """

    def reset(self, seed: int) -> None:
        super().reset(seed)
        self.fast = self.slow = self.tok = None

    def decide(self, obs):
        ex, cfg = self.ex, self.cfg
        calls = np.asarray(obs.calls_per_s)[ex.index] + np.asarray(obs.rejected_per_s)[ex.index]
        tps = np.asarray(obs.tokens_per_s)[ex.index]
        seg = self._segments(obs)
        if self.fast is None:
            if obs.request_rate <= 0:  # no load seen yet: one replica each, cheapest config
                return self._choose(obs, np.full(len(ex), 1e-6), np.ones(len(ex)), tps, seg,
                                    delay_s=0.0)
            self.fast, self.slow = calls.copy(), calls.copy()
            self.tok = np.where(calls > 0, tps / np.maximum(calls, 1e-9), 0.0)
        a_f = 1.0 - math.exp(-self.dt / cfg.ewma_fast_s)
        a_s = 1.0 - math.exp(-self.dt / cfg.ewma_slow_s)
        self.fast += a_f * (calls - self.fast)
        self.slow += a_s * (calls - self.slow)
        per_call = np.where(calls > 0, tps / np.maximum(calls, 1e-9), self.tok)
        self.tok += a_s * (per_call - self.tok)
        lam = np.maximum(self.fast, self.slow) * (1 + cfg.headroom)
        return self._choose(obs, lam, np.maximum(self.tok, per_call), tps, seg,
                            delay_s=cfg.scale_down_delay_s)


class _Hindsighted(_Sized):
    """Deciders that read the harness's :class:`Hindsight` (``see_future``); their sizer's
    settings are ``baselines.hindsight``, tuned on their own (a model tuned for ``queueing``'s
    forecasts may find no configuration feasible for the true load)."""

    section = "hindsight"

    def see_future(self, future: Hindsight) -> None:
        """Receive the episode's true offered load (called by the harness after ``reset``)."""
        win = max(1, int(round(self.s.metrics.rate_window_s / future.dt)))
        kernel = np.ones(win) / win
        smooth = lambda x: np.stack([np.convolve(c, kernel)[:x.shape[0]]  # noqa: E731
                                     for c in x.T], axis=1)
        self.calls, self.tokens = smooth(future.calls), smooth(future.tokens)


@register("oracle")
class OracleDecider(_Hindsighted):
    """The queueing optimiser (with its budget calibration) fed the true future in place of the
    forecast: per expert the mean true call rate (averaged like the observation, over
    ``metrics.rate_window_s``) over the period the decision governs, from now to the next plan
    (one HPA sync plus one tick), no forecast headroom and no scale-down delay; the segments'
    no-load times in the budget, as the static hindsight sizers take them."""

    def decide(self, obs):
        t = float(obs.time_s)
        k = int(round(t / self.dt))
        ahead = int(math.ceil((self.s.simulator.hpa_sync_s + self.dt) / self.dt))
        sl = slice(min(k, len(self.calls) - 1), min(k + ahead + 1, len(self.calls)))
        lam = self.calls[sl].mean(axis=0)
        tps = self.tokens[sl].mean(axis=0)
        tokens = np.where(lam > 0, tps / np.maximum(lam, 1e-9), 0.0)
        return self._choose(obs, lam, tokens, tps, self.sizer.segment_floor_ms, delay_s=0.0)


@register("static-peak")
class StaticPeakDecider(_Hindsighted):
    """Provisioned once for the episode's peak: the pipeline's default vertical configuration
    with the replicas the queueing sizer needs at each expert's peak true call rate."""

    def see_future(self, future: Hindsight) -> None:
        super().see_future(future)
        sz = self.sizer
        lam = self.calls.max(axis=0)
        tokens = (self.tokens / np.maximum(self.calls, 1e-9)).max(axis=0)
        keep = self.current.copy()
        budget = sz.budgets(tokens_per_s=self.tokens.max(axis=0), segment_ms=sz.segment_floor_ms)
        plan = sz.plan(lam, tokens, budget, keep=keep)
        self.replicas = np.maximum(plan.replicas, np.maximum(self.ex.rmin, 1))

    def decide(self, obs):
        ex = self.ex
        return decide_all(ex, float(obs.time_s), replicas=self.replicas, cpu=ex.default["cpu"],
                          memory_mb=ex.default["memory_mb"], gpu_share=ex.default["gpu_share"],
                          concurrency=ex.default["concurrency"])


class _StaticSized(_Hindsighted):
    """One configuration per expert for the whole episode, the cheapest the sizer finds
    feasible for a load statistic (``statistic`` over ticks) of the true, smoothed call rate."""

    statistic = staticmethod(np.max)

    def _load(self, x: np.ndarray) -> np.ndarray:
        return self.statistic(x, axis=0)

    def see_future(self, future: Hindsight) -> None:
        super().see_future(future)
        sz = self.sizer
        lam = self._load(self.calls)
        tokens = self._load(self.tokens) / np.maximum(lam, 1e-9)
        budget = sz.budgets(tokens_per_s=self._load(self.tokens), segment_ms=sz.segment_floor_ms)
        self.plan = sz.plan(lam, np.maximum(tokens, 1.0), budget)
        self.plan.replicas = np.maximum(self.plan.replicas, np.maximum(self.ex.rmin, 1))

    def decide(self, obs):
        p = self.plan
        return decide_all(self.ex, float(obs.time_s), replicas=p.replicas, cpu=p.cpu,
                          memory_mb=p.memory_mb, gpu_share=p.gpu_share,
                          concurrency=p.concurrency)


@register("static-best")
class StaticBestDecider(_StaticSized):
    """Provisioned once, with hindsight, for the episode's peak (smoothed over the rate window)
    at the cheapest vertical configuration the sizer finds feasible there: the best a fixed
    per-expert configuration can do without missing the SLO at the peak (by the model; the
    measured attainment is in every report)."""

    statistic = staticmethod(np.max)


@register("static-mean")
class StaticMeanDecider(_StaticSized):
    """Provisioned once for the episode's mean load at the cheapest feasible configuration:
    what a configuration tuned for the mean costs, and what it misses at the peak."""

    statistic = staticmethod(np.mean)
