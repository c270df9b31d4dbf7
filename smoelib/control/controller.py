"""The control loop on a real clock: fetch -> the one tick -> apply, once per interval.

The seed API::

    dag = build_dag(config="pipeline.yml", validate=True, attach_metadata=True)
    controller = SMoEController(dag=dag, config="config.yaml",
                                prometheus_url="http://prometheus:9090", dry_run=False,
                                log_interval=10, warmup_seconds=30)
    controller.run(interval=5, max_steps=None, verbose=True)

The controller is a thin driver of :func:`smoelib.core.tick.tick` with three ports: a
:class:`~smoelib.core.ports.MetricsSource` (Prometheus), a
:class:`~smoelib.core.ports.Decider` (``policy.name``) and an
:class:`~smoelib.core.ports.Actuator` (the scaler's decision store, then the vertical
backend). The clock is injected (:class:`Clock`), so the same loop runs in real time or in
simulated time.

No exception from a port ends the loop: each is caught, logged in one line naming the port,
counted (``/metrics``, :mod:`smoelib.control.telemetry`), and the last good decision stays.
Its age is never refreshed, so once it is older than ``scaler.staleness_s`` the scaler answers
UNAVAILABLE and KEDA's fallback acts. :meth:`SMoEController.alive` (liveness inside ``smoe
serve``) turns false only when the loop thread is dead or has not attempted a tick for
``max(3 x interval, 60 s)``; a failing dependency never changes it, since a restart would not
cure it.
"""

from __future__ import annotations

import logging
import math
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol

from smoelib.control.actuator import DecisionWriter, ProductionActuator, VerticalPort
from smoelib.control.report import format_tick, layer_table
from smoelib.control.telemetry import ControllerTelemetry
from smoelib.core.decisions import PipelineDecision
from smoelib.core.guards import GuardProfile, get_profile
from smoelib.core.observation import Observation
from smoelib.core.ports import Actuator, Decider, MetricsSource
from smoelib.core.tick import TickState, tick
from smoelib.errors import PermanentError, TransientError
from smoelib.pipeline.topology import PipelineDAG
from smoelib.settings import Settings, load_settings

__all__ = ["SMoEController", "Clock", "WallClock", "TickReport"]

log = logging.getLogger("smoelib.controller")

Status = Literal["warmup", "backoff", "source-error", "decider-error", "refused",
                 "actuator-error", "ok"]
MAX_BACKOFF_TICKS = 4
"""Longest wait between fetches while the metric source keeps failing, in control intervals:
long enough not to hammer a struggling Prometheus, short enough to recover well within the
scaler's staleness limit."""
LIVENESS_MIN_S = 60.0
"""The loop counts as wedged when it has not attempted a tick for max(3 x interval, this)."""


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
    """What one tick did. ``decision`` is the one in force after it (the last good one when
    the tick failed; in a dry run, the one that would be); ``notes`` are the guards' and the
    vertical planner's; ``decide_ms`` the wall time of the decider's call; ``error`` names the
    failing port and why; ``fired`` the guard rule of each of the guards' notes."""

    time: float
    status: Status
    decision: PipelineDecision | None = None
    notes: tuple[str, ...] = ()
    patches: int = 0
    decide_ms: float = 0.0
    error: str = ""
    fired: tuple[str, ...] = ()


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
        source: the metric source (default: Prometheus).
        decider: the policy (default: ``policy.name`` from the registry).
        store: the scaler's DecisionStore to write replica targets to (default: a new in-memory
            store holding this pipeline).
        vertical: the vertical loop (default: the configured backend; none in a dry run when
            the backend cannot be reached); False: replicas only, the other knobs stay as
            they are.
        guards: the guard profile (or its name); default: the one ``policy.name`` runs under
            (production for sMoE's own policies), production for an injected decider.
        actuator: replaces the store and vertical pair entirely (tests, other clusters).
    """

    def __init__(self, dag: PipelineDAG, config: str | Path | Settings | dict | None = None,
                 prometheus_url: str | None = None, dry_run: bool = False,
                 log_interval: float = 10.0, warmup_seconds: float = 30.0, *,
                 clock: Clock | None = None, source: MetricsSource | None = None,
                 decider: Decider | None = None, store: DecisionWriter | None = None,
                 vertical: VerticalPort | Literal[False] | None = None,
                 guards: str | GuardProfile | None = None, actuator: Actuator | None = None):
        self.dag = dag
        self.settings = config if isinstance(config, Settings) else load_settings(config)
        self.log_interval = float(log_interval)
        self.warmup_s = float(warmup_seconds)
        self.clock = clock or WallClock()
        self.source = source or self._prometheus(prometheus_url)
        self.profile = get_profile(guards or ("production" if decider is not None
                                              else self._default_guards()),
                                   where="--guards")
        self.decider = decider or self._decider()
        self.store = store if store is not None else self._store()
        self._dry_run = dry_run
        self.actuator = actuator or ProductionActuator(
            self.store, None if vertical is False else vertical if vertical is not None
            else self._vertical(dry_run), dry_run=dry_run)
        self.state = TickState()
        self.previous: PipelineDecision | None = None
        self.observation: Observation | None = None
        self.failures = 0
        self.ticks = 0
        self.telemetry = ControllerTelemetry(dag.name)
        self._started = self.clock.now()
        self._attempted = self._started
        self._retry_at = 0.0
        self._last_log = -float("inf")
        self._thread: threading.Thread | None = None
        self.stop_event = threading.Event()

    # ---- wiring (composition defaults) -----------------------------------------------------
    def _prometheus(self, url: str | None) -> MetricsSource:
        from smoelib.control.metrics import PrometheusSource

        m = self.settings.metrics
        return PrometheusSource(self.dag, url=url or m.prometheus_url,
                                timeout_s=m.query_timeout_s, window_s=m.rate_window_s,
                                queries=dict(m.queries), configured=self._configured,
                                max_sample_age_s=m.max_sample_age_s,
                                verify=m.ca_bundle or m.tls_verify)

    def _default_guards(self) -> str:
        from smoelib.policy.base import default_guards

        return default_guards(self.settings.policy.name)

    def _decider(self) -> Decider:
        from smoelib.policy.base import get_decider

        decider = get_decider(self.settings.policy.name, dag=self.dag, settings=self.settings)
        decider.reset(0)
        return decider

    def _store(self) -> DecisionWriter:
        from smoelib.scaler.store import DecisionStore

        store = DecisionStore(staleness_s=self.settings.scaler.staleness_s, clock=self.clock.now,
                              clock_skew_s=self.settings.scaler.clock_skew_s)
        store.add_pipeline(self.dag)
        return store

    def _vertical(self, dry_run: bool) -> VerticalPort | None:
        from smoelib.vertical.factory import vertical_loop

        if self.settings.vertical.backend == "none":
            return None
        try:
            return vertical_loop(self.dag, self.settings)
        except Exception as e:  # noqa: BLE001 - an unreachable cluster must not stop a dry run
            if not dry_run:
                raise
            log.warning("vertical backend unavailable (%s); the dry run plans no patches", e)
            return None

    def _configured(self) -> dict[str, tuple[float, int]]:
        """GPU share and concurrency as last decided (no exporter reports them)."""
        if self.last is None:
            return {}
        return {n: (e.gpu_share, e.concurrency) for n, e in self.last.experts.items()}

    @property
    def last(self) -> PipelineDecision | None:
        """The last decision the tick accepted (what the cluster was last told)."""
        return self.state.last

    @property
    def dry_run(self) -> bool:
        return self._dry_run

    @dry_run.setter
    def dry_run(self, value: bool) -> None:
        self._dry_run = value
        if isinstance(self.actuator, ProductionActuator):
            self.actuator.dry_run = value

    # ---- one tick ------------------------------------------------------------------------
    def step(self) -> TickReport:
        """One tick: fetch, decide, guard, apply. Never raises for a failing port or a bad
        proposal: the last good decision stays and the report says why."""
        now = self.clock.now()
        self.ticks += 1
        self._attempted = now
        if now < self._started + self.warmup_s:
            return self._report(TickReport(now, "warmup", self.last))
        if now < self._retry_at:
            return self._report(TickReport(now, "backoff", self.last))
        try:
            observation = self.source.fetch(now)
        except Exception as e:  # noqa: BLE001 - no answer of any source may end the loop
            self.failures += 1
            interval = self.settings.control.interval_s
            wait = interval * min(2 ** (self.failures - 1), MAX_BACKOFF_TICKS)
            self._retry_at = now + wait
            why = str(e) if isinstance(e, TransientError | PermanentError) else _what(e)
            log.warning("metrics: %s; keeping the last decision (age %s), retry in %.0f s",
                        why, self._age(now), wait)
            return self._report(TickReport(now, "source-error", self.last, error=why),
                                ports=("metrics",))
        try:
            result = tick(observation, self.decider, self.state, dag=self.dag,
                          settings=self.settings, profile=self.profile, now=now)
        except Exception as e:  # noqa: BLE001 - a decider bug must not end the loop
            self.failures += 1
            why = f"decider {type(self.decider).__name__} failed ({_what(e)})"
            log.error("%s; keeping the last decision (age %s)", why, self._age(now))
            return self._report(TickReport(now, "decider-error", self.last, error=why),
                                ports=("decider",))
        self.observation = observation
        if not result.accepted:
            self.failures = 0
            log.warning("decision refused: %s", "; ".join(result.notes))
            return self._report(TickReport(now, "refused", self.last, result.notes,
                                           decide_ms=result.decide_ms), result=result)
        decision = result.decision
        try:
            feedback = self.actuator.apply(decision, now=now)
        except Exception as e:  # noqa: BLE001 - an actuator bug must not end the loop
            feedback = None
            failures: tuple[tuple[str, str], ...] = (("actuator", _what(e)),)
        else:
            failures = feedback.failures
        self.previous = self.state.last
        self.state = (result.state.after(feedback, now=now) if feedback is not None
                      else result.state)
        notes = result.notes + (feedback.notes if feedback else ())
        for port, message in failures:
            log.error("%s: %s; %s", port, message, "the scaler keeps serving the last stored "
                      "decision" if port == "store" else "retried next tick")
        status: Status = "actuator-error" if failures else "ok"
        self.failures = self.failures + 1 if failures else 0
        report = TickReport(now, status, decision, notes, feedback.patches if feedback else 0,
                            result.decide_ms,
                            error="; ".join(f"{p}: {m}" for p, m in failures),
                            fired=result.fired)
        self._report(report, result=result, ports=tuple(p for p, _ in failures))
        if now - self._last_log >= self.log_interval:
            self._last_log = now
            log.info("%s\n%s", format_tick(report, self.dag, self.settings, self.previous),
                     layer_table(observation, decision, self.dag, self.settings))
        return report

    def _report(self, report: TickReport, *, result: Any = None,
                ports: tuple[str, ...] = ()) -> TickReport:
        self.telemetry.tick(report.status, failures=self.failures,
                            decide_s=result.decide_ms / 1000.0 if result else None,
                            rules=result.fired if result else (), ports=ports,
                            unknown=getattr(self.source, "unknown", ()))
        return report

    def _age(self, now: float) -> str:
        return "none yet" if self.last is None else f"{now - self.last.updated_at:.0f} s"

    def decision_age_s(self) -> float:
        """Seconds since the last good decision (NaN: none yet)."""
        return math.nan if self.last is None else self.clock.now() - self.last.updated_at

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
                try:
                    report = self.step()
                except Exception as e:  # noqa: BLE001 - the loop outlives its own bugs too
                    log.error("controller tick failed (%s); keeping the last decision",
                              _what(e))
                    report = TickReport(tick_start, "decider-error", self.last,
                                        error=_what(e))
                reports.append(report)
                if verbose:
                    previous = self.previous if report.status == "ok" else None
                    print(format_tick(report, self.dag, self.settings, previous), flush=True)
                if max_steps is not None and len(reports) >= max_steps:
                    break
                self.clock.sleep(max(0.0, tick_start + interval - self.clock.now()))
        except KeyboardInterrupt:
            log.info("interrupted: stopping (the decision file is saved on every update)")
        except BaseException as e:
            log.critical("controller loop of %s ended: %s", self.dag.name, _what(e))
            raise
        finally:
            restore()
        return reports

    def stop(self) -> None:
        """Stop :meth:`run` after the current tick (and wait for its thread inside
        ``smoe serve``)."""
        self.stop_event.set()
        if isinstance(self.clock, WallClock):
            self.clock.stop.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=30)

    def _install_signals(self) -> Callable[[], None]:
        if threading.current_thread() is not threading.main_thread():
            return lambda: None
        previous = signal.getsignal(signal.SIGTERM)
        signal.signal(signal.SIGTERM, lambda _s, _f: self.stop())
        return lambda: signal.signal(signal.SIGTERM, previous)

    # ---- inside `smoe serve` ---------------------------------------------------------------
    def start(self, store: DecisionWriter, registry: Any) -> None:
        """Join ``smoe serve``: write to its store, export the controller's series on its
        ``/metrics``, tick in a background thread."""
        self.store = store
        if isinstance(self.actuator, ProductionActuator):
            self.actuator.store = store
        self.telemetry = ControllerTelemetry(self.dag.name, registry)
        self.telemetry.watch(decision_age=self.decision_age_s,
                             tick_age=lambda: self.clock.now() - self._attempted)
        self._attempted = self.clock.now()
        self._thread = threading.Thread(target=self.run, name=f"smoe-controller-{self.dag.name}",
                                        daemon=True,
                                        kwargs={"interval": self.settings.control.interval_s,
                                                "verbose": False})
        self._thread.start()

    def alive(self) -> bool:
        """Liveness: the loop thread runs and attempted a tick within ``max(3 x interval,
        60 s)``. A failing dependency does not make it false (a restart would not cure it)."""
        if self._thread is not None and not self._thread.is_alive():
            return False
        limit = max(3 * self.settings.control.interval_s, LIVENESS_MIN_S)
        return self.clock.now() - self._attempted <= limit


def _what(e: BaseException) -> str:
    text = str(e).splitlines()[0] if str(e) else ""
    return f"{type(e).__name__}: {text}" if text else type(e).__name__
