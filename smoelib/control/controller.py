"""The control loop: fetch -> encode -> predict -> guard -> apply, once per tick.

The seed API::

    dag = build_dag(config="pipeline.yml", validate=True, attach_metadata=True)
    controller = SMoEController(dag=dag, config="config.yaml",
                                prometheus_url="http://prometheus:9090", dry_run=False,
                                log_interval=10, warmup_seconds=30)
    controller.run(interval=5, max_steps=None, verbose=True)

Replica targets go into the scaler's :class:`~smoelib.scaler.store.DecisionStore` (KEDA reads
them through the external scaler); the other knobs go through the vertical planner and the
configured backend. The clock is injected (:class:`Clock`), so the same loop runs in real time
or in simulated time. A source that fails keeps the last good decision without refreshing its
age: once it is older than ``scaler.staleness_s`` the scaler answers UNAVAILABLE and KEDA's
fallback acts.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal, Protocol

from smoelib.control.report import format_tick, layer_table
from smoelib.core.decisions import PipelineDecision
from smoelib.core.guards import busy_experts, guard
from smoelib.errors import PermanentError, TransientError
from smoelib.pipeline.topology import PipelineDAG
from smoelib.settings import Settings, load_settings

__all__ = ["SMoEController", "Clock", "WallClock", "TickReport"]

log = logging.getLogger("smoelib.control.controller")

Status = Literal["warmup", "backoff", "source-error", "decider-error", "refused", "ok"]
MAX_BACKOFF_TICKS = 4
"""Longest wait between fetches while the metric source keeps failing, in control intervals:
long enough not to hammer a struggling Prometheus, short enough to recover well within the
scaler's staleness limit."""


class Clock(Protocol):
    """Time for the loop: ``now()`` in Unix seconds, ``sleep(seconds)``."""

    def now(self) -> float: ...

    def sleep(self, seconds: float) -> None: ...


class WallClock:
    """Real time; ``sleep`` returns early when ``stop`` is set."""

    def __init__(self, stop: threading.Event | None = None):
        self.stop = stop or threading.Event()

    def now(self) -> float:
        return time.time()

    def sleep(self, seconds: float) -> None:
        self.stop.wait(max(0.0, seconds))


@dataclass(frozen=True)
class TickReport:
    """What one tick did. ``decision`` is the one applied (or, in a dry run, that would be);
    ``notes`` are the guards' and the vertical planner's; ``decide_ms`` the wall time of the
    decider's call."""

    time: float
    status: Status
    decision: PipelineDecision | None = None
    notes: tuple[str, ...] = ()
    patches: int = 0
    decide_ms: float = 0.0
    error: str = ""


class SMoEController:
    """One pipeline's control loop.

    Args:
        dag: the pipeline (``build_dag(...)``).
        config: ``config.yaml`` path, a parsed mapping, a :class:`Settings`, or None.
        prometheus_url: overrides ``metrics.prometheus_url``.
        dry_run: decide and log, apply nothing (no store update, no patch sent).
        log_interval: seconds between info-level summaries (per-layer table).
        warmup_seconds: wait this long after start before the first action.
        clock: time source (default: real time).
        source: the :class:`~smoelib.control.metrics.MetricsSource` (default: Prometheus).
        decider: the policy (default: ``policy.name`` from the registry).
        store: the scaler's DecisionStore to write replica targets to (default: a new in-memory
            store holding this pipeline).
        vertical: the vertical loop (default: the configured backend; none in a dry run when
            the backend cannot be reached); False: replicas only, the other knobs stay as
            they are.
    """

    def __init__(self, dag: PipelineDAG, config: str | Path | Settings | dict | None = None,
                 prometheus_url: str | None = None, dry_run: bool = False,
                 log_interval: float = 10.0, warmup_seconds: float = 30.0, *,
                 clock: Clock | None = None, source: Any = None, decider: Any = None,
                 store: Any = None, vertical: Any = None):
        self.dag = dag
        self.settings = config if isinstance(config, Settings) else load_settings(config)
        self.dry_run = dry_run
        self.log_interval = float(log_interval)
        self.warmup_s = float(warmup_seconds)
        self.clock = clock or WallClock()
        self.source = source or self._prometheus(prometheus_url)
        self.decider = decider or self._decider()
        self.store = store if store is not None else self._store()
        self.vertical = (None if vertical is False else vertical if vertical is not None
                         else self._vertical())
        self.last: PipelineDecision | None = None
        self.previous: PipelineDecision | None = None
        self.observation: Any = None
        self.failures = 0
        self.ticks = 0
        self._started = self.clock.now()
        self._retry_at = 0.0
        self._last_log = -float("inf")
        self.stop_event = threading.Event()

    # ---- wiring (composition defaults) -----------------------------------------------------
    def _prometheus(self, url: str | None) -> Any:
        from smoelib.control.metrics import PrometheusSource

        m = self.settings.metrics
        return PrometheusSource(self.dag, url=url or m.prometheus_url,
                                timeout_s=m.query_timeout_s, window_s=m.rate_window_s,
                                queries=dict(m.queries), configured=self._configured,
                                max_sample_age_s=m.max_sample_age_s)

    def _decider(self) -> Any:
        from smoelib.policy.base import get_decider

        decider = get_decider(self.settings.policy.name, dag=self.dag, settings=self.settings)
        decider.reset(0)
        return decider

    def _store(self) -> Any:
        from smoelib.scaler.store import DecisionStore

        store = DecisionStore(staleness_s=self.settings.scaler.staleness_s, clock=self.clock.now)
        store.add_pipeline(self.dag)
        return store

    def _vertical(self) -> Any:
        from smoelib.vertical.loop import VerticalLoop

        if self.settings.vertical.backend == "none":
            return None
        try:
            return VerticalLoop.from_settings(self.dag, self.settings)
        except Exception as e:  # noqa: BLE001 - an unreachable cluster must not stop a dry run
            if not self.dry_run:
                raise
            log.warning("vertical backend unavailable (%s); the dry run plans no patches", e)
            return None

    def _configured(self) -> dict[str, tuple[float, int]]:
        """GPU share and concurrency as last decided (no exporter reports them)."""
        if self.last is None:
            return {}
        return {n: (e.gpu_share, e.concurrency) for n, e in self.last.experts.items()}

    # ---- one tick ------------------------------------------------------------------------
    def step(self) -> TickReport:
        """One tick: fetch, decide, guard, apply. Never raises for a failing source or a bad
        proposal: the last good decision stays and the report says why."""
        now = self.clock.now()
        self.ticks += 1
        if now < self._started + self.warmup_s:
            return TickReport(now, "warmup")
        if now < self._retry_at:
            return TickReport(now, "backoff")
        try:
            observation = self.source.fetch(now)
        except (TransientError, PermanentError) as e:
            self.failures += 1
            interval = self.settings.control.interval_s
            wait = interval * min(2 ** (self.failures - 1), MAX_BACKOFF_TICKS)
            self._retry_at = now + wait
            log.warning("metrics unavailable (%s); keeping the last decision (age %s), "
                        "retry in %.0f s", e, self._age(now), wait)
            return TickReport(now, "source-error", self.last, error=str(e))
        self.failures = 0
        start = time.perf_counter()
        try:
            proposal = self.decider.decide(observation)
        except Exception as e:  # noqa: BLE001 - a decider bug must not stop the loop
            log.error("decider %s failed (%s: %s); keeping the last decision",
                      type(self.decider).__name__, type(e).__name__, e)
            return TickReport(now, "decider-error", self.last, error=f"{type(e).__name__}: {e}")
        decide_ms = (time.perf_counter() - start) * 1000.0
        result = guard(proposal, dag=self.dag, settings=self.settings, last=self.last,
                       p95_ms=observation.p95_ms, busy=busy_experts(observation, self.dag))
        if not result.accepted:
            log.warning("decision refused: %s", "; ".join(result.notes))
            return TickReport(now, "refused", self.last, result.notes, decide_ms=decide_ms)
        decision = replace(result.decision, updated_at=now)
        notes, patches = list(result.notes), 0
        if self.vertical is not None:
            v_notes, patches = self.vertical.apply(decision, now=now, dry_run=self.dry_run)
            notes += v_notes
        if not self.dry_run:
            self.store.update(decision)
        self.previous, self.last = self.last, decision
        self.observation = observation
        report = TickReport(now, "ok", decision, tuple(notes), patches, decide_ms)
        if now - self._last_log >= self.log_interval:
            self._last_log = now
            log.info("%s\n%s", format_tick(report, self.dag, self.settings, self.previous),
                     layer_table(observation, decision, self.dag, self.settings))
        return report

    def _age(self, now: float) -> str:
        return "none yet" if self.last is None else f"{now - self.last.updated_at:.0f} s"

    # ---- the loop ------------------------------------------------------------------------
    def run(self, interval: float = 5, max_steps: int | None = None, verbose: bool = True
            ) -> list[TickReport]:
        """Tick every ``interval`` seconds of the injected clock until ``max_steps`` ticks,
        :meth:`stop`, SIGTERM or Ctrl-C. ``verbose`` prints a compact line per tick naming the
        experts that changed. Returns the reports."""
        reports: list[TickReport] = []
        restore = self._install_signals()
        try:
            while not self.stop_event.is_set():
                tick_start = self.clock.now()
                report = self.step()
                reports.append(report)
                if verbose:
                    previous = self.previous if report.status == "ok" else None
                    print(format_tick(report, self.dag, self.settings, previous), flush=True)
                if max_steps is not None and len(reports) >= max_steps:
                    break
                self.clock.sleep(max(0.0, tick_start + interval - self.clock.now()))
        except KeyboardInterrupt:
            log.info("interrupted: stopping (the decision file is saved on every update)")
        finally:
            restore()
        return reports

    def stop(self) -> None:
        """Stop :meth:`run` after the current tick (and wait for its thread inside
        ``smoe serve``)."""
        self.stop_event.set()
        if isinstance(self.clock, WallClock):
            self.clock.stop.set()
        thread = getattr(self, "_thread", None)
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=30)

    def _install_signals(self) -> Callable[[], None]:
        if threading.current_thread() is not threading.main_thread():
            return lambda: None
        previous = signal.getsignal(signal.SIGTERM)
        signal.signal(signal.SIGTERM, lambda _s, _f: self.stop())
        return lambda: signal.signal(signal.SIGTERM, previous)

    # ---- inside `smoe serve` ---------------------------------------------------------------
    def start(self, store: Any, registry: Any) -> None:
        """Join ``smoe serve``: write to its store, tick in a background thread."""
        self.store = store
        self._thread = threading.Thread(target=self.run, name="smoe-controller", daemon=True,
                                        kwargs={"interval": self.settings.control.interval_s,
                                                "verbose": False})
        self._thread.start()
