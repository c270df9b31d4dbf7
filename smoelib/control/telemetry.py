"""The controller's own series, served on the scaler's ``/metrics`` inside ``smoe serve``.

``smoe_controller_ticks_total{pipeline, outcome}`` (ok, refused, warmup, backoff, source-error,
decider-error, actuator-error), ``smoe_controller_consecutive_failures{pipeline}``,
``smoe_controller_port_failures_total{pipeline, port}`` (metrics, decider, store, vertical),
``smoe_controller_guard_notes_total{pipeline, rule}`` (what each guard rule changed or
refused), ``smoe_controller_decide_seconds{pipeline}`` (histogram),
``smoe_controller_decision_age_seconds{pipeline}`` (NaN before the first decision) and
``smoe_controller_last_tick_age_seconds{pipeline}`` (since the loop last attempted a tick).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

__all__ = ["ControllerTelemetry"]

_DECIDE_BUCKETS = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0)


class ControllerTelemetry:
    """The series of one pipeline's controller, registered in ``registry`` (a private one when
    None: the seed API's standalone loop serves no ``/metrics``)."""

    def __init__(self, pipeline: str, registry: CollectorRegistry | None = None):
        r = registry if registry is not None else CollectorRegistry()
        self.pipeline = pipeline
        self._unknown: set[str] = set()
        self.ticks = Counter("smoe_controller_ticks", "controller ticks by outcome",
                             ["pipeline", "outcome"], registry=r)
        self.failing = Gauge("smoe_controller_consecutive_failures",
                             "ticks in a row that failed to fetch, decide or apply",
                             ["pipeline"], registry=r)
        self.port_failures = Counter("smoe_controller_port_failures",
                                     "failures by port (metrics, decider, store, vertical)",
                                     ["pipeline", "port"], registry=r)
        self.guard_notes = Counter("smoe_controller_guard_notes",
                                   "what each guard rule changed or refused",
                                   ["pipeline", "rule"], registry=r)
        self.decide = Histogram("smoe_controller_decide_seconds", "the decider's wall time",
                                ["pipeline"], buckets=_DECIDE_BUCKETS, registry=r)
        self.age = Gauge("smoe_controller_decision_age_seconds",
                         "age of the last good decision (NaN: none yet)", ["pipeline"],
                         registry=r)
        self.unknown = Gauge("smoe_controller_unknown_series",
                             "1 while a metric query has no series, so its value is unknown",
                             ["pipeline", "query"], registry=r)
        self.tick_age = Gauge("smoe_controller_last_tick_age_seconds",
                              "seconds since the loop last attempted a tick", ["pipeline"],
                              registry=r)

    def watch(self, *, decision_age: Callable[[], float], tick_age: Callable[[], float]) -> None:
        """Read the two ages at every scrape."""
        self.age.labels(self.pipeline).set_function(decision_age)
        self.tick_age.labels(self.pipeline).set_function(tick_age)

    def tick(self, outcome: str, *, failures: int, decide_s: float | None = None,
             rules: Iterable[str] = (), ports: Iterable[str] = (),
             unknown: Iterable[str] = ()) -> None:
        """Record one tick."""
        p = self.pipeline
        unknown = set(unknown)
        for query in unknown | self._unknown:
            self.unknown.labels(p, query).set(1.0 if query in unknown else 0.0)
        self._unknown = unknown
        self.ticks.labels(p, outcome).inc()
        self.failing.labels(p).set(failures)
        if decide_s is not None and math.isfinite(decide_s):
            self.decide.labels(p).observe(decide_s)
        for rule in rules:
            self.guard_notes.labels(p, rule).inc()
        for port in ports:
            self.port_failures.labels(p, port).inc()
