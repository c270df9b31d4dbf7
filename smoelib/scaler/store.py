"""The DecisionStore: the replica targets the scaler serves, one decision per pipeline.

Writers (the controller, or a changed decision file) go through one lock; every accepted decision
is written to the pipeline's decision file atomically *before* it is served, so a restarted
scaler reads back exactly what it served and answers at once. Readers (the gRPC handlers) take no
lock: each pipeline's state is an immutable :class:`PipelineState` swapped whole.

Time comes from an injected clock (UNIX seconds); a decision older than ``staleness_s`` is not
served. Keeping the last good decision never refreshes its age.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from types import MappingProxyType
from typing import Protocol

from smoelib.core.decisions import PipelineDecision, check_decision, load_decision, write_decision
from smoelib.errors import ConfigError
from smoelib.scaler.naming import metric_name
from smoelib.scaler.status import ExpertNotFound, NoDecision, PipelineNotFound, StaleDecision

__all__ = ["DecisionStore", "PipelineState", "ExpertAnswer", "Clock"]

log = logging.getLogger(__name__)

Clock = Callable[[], float]
"""A callable returning the current time in UNIX seconds."""


class _HasExperts(Protocol):
    name: str
    experts: Sequence[str]


@dataclass(frozen=True, slots=True)
class ExpertAnswer:
    """What the scaler answers for one expert: desired ``replicas``, the pipeline's decision
    ``version`` it came from."""

    replicas: int
    version: int


@dataclass(frozen=True)
class PipelineState:
    """One pipeline as served at one instant. Immutable: writers swap it whole.

    ``metric_names`` maps each expert node id to its advertised metric name. ``decision`` is the
    last good decision (None before the first); ``load_error`` the last decision-file problem
    (None once a good decision has been read or written since). ``version`` is the store version
    at which this pipeline last changed.
    """

    name: str
    metric_names: MappingProxyType[str, str]
    decision_path: Path | None
    decision: PipelineDecision | None = None
    load_error: ConfigError | None = None
    version: int = 0
    file_stamp: tuple[int, int] | None = None
    bounds: MappingProxyType[str, tuple[int, int]] | None = None


class DecisionStore:
    """Thread-safe, versioned store of one decision per pipeline, several pipelines.

    Args:
        staleness_s: seconds after ``updated_at`` beyond which a decision is not served.
        clock: current time in UNIX seconds (``time.time`` at the composition root).
        clock_skew_s: a decision dated more than this ahead of ``clock`` is refused (it would
            never go stale).
    """

    def __init__(self, *, staleness_s: float, clock: Clock, clock_skew_s: float = 30.0):
        if not staleness_s > 0:
            raise ValueError(f"staleness_s must be > 0, got {staleness_s!r}")
        self.staleness_s = float(staleness_s)
        self.clock_skew_s = float(clock_skew_s)
        self._clock = clock
        self._lock = threading.Lock()
        self._states: dict[str, PipelineState] = {}
        self._version = 0
        self._subscribers: tuple[Callable[[str], None], ...] = ()

    # ---- registration and writes ---------------------------------------------------------
    def add_pipeline(self, pipeline: _HasExperts, *, decision_path: str | Path | None = None
                     ) -> ConfigError | None:
        """Serve ``pipeline`` (anything with ``.name`` and ``.experts``, e.g. a PipelineDAG).

        With ``decision_path``, the decision file is read now if it exists (a missing file is
        no decision yet) and written on every update. A corrupt or foreign file is returned
        (the caller reports it) and the pipeline is served UNAVAILABLE until a good decision
        arrives.

        Raises:
            ValueError: the pipeline is already served, or its names make no metric name.
        """
        names = MappingProxyType({n: metric_name(pipeline.name, n) for n in pipeline.experts})
        spec = getattr(pipeline, "spec", None)
        bounds = MappingProxyType({n: (spec(n).replicas_min, spec(n).replicas_max)
                                   for n in pipeline.experts}) if spec else None
        path = Path(decision_path) if decision_path is not None else None
        with self._lock:
            if pipeline.name in self._states:
                raise ValueError(f"pipeline {pipeline.name!r} is already served")
            self._states[pipeline.name] = PipelineState(pipeline.name, names, path,
                                                        bounds=bounds)
            version = self._commit(pipeline.name, lambda s: s)
        self._notify(pipeline.name, version)
        if path is not None:
            self._reload(pipeline.name, report=False)
        return self._states[pipeline.name].load_error

    def update(self, decision: PipelineDecision) -> int:
        """Accept a new decision: validate, persist atomically, then serve it.

        All or nothing: if the file cannot be written, the previous decision stays served.

        Returns:
            The store version at which the decision is served.

        Raises:
            PipelineNotFound: the pipeline is not served here.
            ConfigError: the decision names experts the pipeline does not have.
            OSError: the decision file could not be written.
        """
        with self._lock:
            state = self._state(decision.pipeline)
            check_decision(decision, pipeline=state.name, experts=state.metric_names,
                           source=str(state.decision_path or "<decision>"),
                           bounds=state.bounds, now=self._clock(),
                           clock_skew_s=self.clock_skew_s)
            stamp = None
            if state.decision_path is not None:
                write_decision(state.decision_path, decision)
                stamp = _stamp(state.decision_path)
            version = self._commit(state.name, lambda s: replace(
                s, decision=decision, load_error=None, file_stamp=stamp))
        self._notify(decision.pipeline, version)
        return version

    def reload_if_changed(self, pipeline: str) -> bool:
        """Re-read the pipeline's decision file if it changed on disk since last read/written.

        A bad file keeps the last good decision (whose age keeps growing) and records the
        error; it is logged once per change of the file.

        Returns:
            Whether the served decision changed.
        """
        return self._reload(pipeline, report=True)

    def _reload(self, pipeline: str, *, report: bool) -> bool:
        with self._lock:
            state = self._state(pipeline)
            path = state.decision_path
            stamp = _stamp(path) if path is not None else None
            if path is not None and stamp is None and state.file_stamp is not None:
                log.warning("decision file %s was deleted; pipeline %s keeps %s", path, pipeline,
                            "its last good decision (its age keeps growing)" if state.decision
                            else "answering UNAVAILABLE")
                self._commit(pipeline, lambda s: replace(s, file_stamp=None))
                return False
            if path is None or stamp is None or stamp == state.file_stamp:
                return False
            try:
                decision = load_decision(path)
                check_decision(decision, pipeline=pipeline, experts=state.metric_names,
                               source=str(path), bounds=state.bounds, now=self._clock(),
                               clock_skew_s=self.clock_skew_s)
            except ConfigError as e:
                error = e
                if report:
                    log.error("decision file rejected, pipeline %s served %s: %s", pipeline,
                              "from its last good decision" if state.decision
                              else "UNAVAILABLE", "; ".join(error.lines()))
                version = self._commit(pipeline, lambda s: replace(
                    s, load_error=error, file_stamp=stamp))
                changed = False
            else:
                changed = decision != state.decision
                version = self._commit(pipeline, lambda s: replace(
                    s, decision=decision, load_error=None, file_stamp=stamp))
        self._notify(pipeline, version)
        return changed

    def subscribe(self, callback: Callable[[str], None]) -> Callable[[], None]:
        """Call ``callback(pipeline)`` after every change, on the writer's thread; it must not
        block. Returns the function that unsubscribes."""
        with self._lock:
            self._subscribers = (*self._subscribers, callback)

        def unsubscribe() -> None:
            with self._lock:
                self._subscribers = tuple(c for c in self._subscribers if c is not callback)
        return unsubscribe

    # ---- reads (lock-free) ----------------------------------------------------------------
    @property
    def version(self) -> int:
        """Increases on every change to any pipeline."""
        return self._version

    def pipelines(self) -> tuple[str, ...]:
        return tuple(self._states)

    def state(self, pipeline: str) -> PipelineState:
        """The pipeline's current state. Raises PipelineNotFound."""
        return self._state(pipeline)

    def metric_of(self, pipeline: str, expert: str) -> str:
        """The metric name ``expert`` advertises. Raises PipelineNotFound, ExpertNotFound."""
        state = self._state(pipeline)
        try:
            return state.metric_names[expert]
        except KeyError:
            raise ExpertNotFound(f"{expert!r} is not an expert of pipeline {pipeline!r}") from None

    def lookup(self, pipeline: str, expert: str) -> ExpertAnswer:
        """The expert's desired replicas now.

        Raises:
            PipelineNotFound, ExpertNotFound: no such pipeline or expert here.
            NoDecision: no decision for the expert (none yet, or the file was unreadable).
            StaleDecision: the decision is older than ``staleness_s``.
        """
        state = self._state(pipeline)
        if expert not in state.metric_names:
            raise ExpertNotFound(f"{expert!r} is not an expert of pipeline {pipeline!r}")
        decision = state.decision
        chosen = decision.experts.get(expert) if decision is not None else None
        if chosen is None:
            why = (f"; decision file: {state.load_error.lines()[0]}" if state.load_error
                   else "")
            raise NoDecision(f"no decision for {pipeline}/{expert}{why}")
        age = self._clock() - decision.updated_at
        if age > self.staleness_s:
            raise StaleDecision(f"the decision for {pipeline} is {age:.1f} s old "
                                f"(staleness limit {self.staleness_s:g} s)")
        return ExpertAnswer(chosen.replicas, state.version)

    def decision_age_s(self, pipeline: str) -> float | None:
        """Seconds since the pipeline's served decision was made; None without one."""
        decision = self._state(pipeline).decision
        return None if decision is None else self._clock() - decision.updated_at

    # ---- internals ------------------------------------------------------------------------
    def _state(self, pipeline: str) -> PipelineState:
        try:
            return self._states[pipeline]
        except KeyError:
            raise PipelineNotFound(f"pipeline {pipeline!r} is not served here") from None

    def _commit(self, pipeline: str, change: Callable[[PipelineState], PipelineState]) -> int:
        # The caller holds the lock.
        self._version += 1
        self._states[pipeline] = replace(change(self._states[pipeline]), version=self._version)
        return self._version

    def _notify(self, pipeline: str, version: int) -> None:
        for callback in self._subscribers:
            try:
                callback(pipeline)
            except Exception:  # a broken listener must not undo an accepted decision
                log.exception("decision listener failed (pipeline %s, version %d)",
                              pipeline, version)


def _stamp(path: Path) -> tuple[int, int] | None:
    """(mtime ns, size) of the file, None if it does not exist."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return st.st_mtime_ns, st.st_size
