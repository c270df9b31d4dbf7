"""Decision files: one pipeline's per-expert knobs at one instant. Pure.

``{"pipeline": NAME, "updated_at": UNIX_SECONDS, "experts": {NODE_ID: {"replicas": INT,
"cpu": CORES, "memory_mb": INT, "gpu_share": FRACTION, "concurrency": INT}}}``. The controller,
the scaler, ``smoe plan`` and the tests share this format. An expert missing from a file has no
decision (never 0).
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from collections.abc import Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass
from operator import attrgetter
from pathlib import Path
from types import MappingProxyType
from typing import Any

import numpy as np

from smoelib.core.knobs import INTEGER_KNOBS, KNOB_NAMES, KNOBS
from smoelib.errors import ConfigError, Problem
from smoelib.pipeline.yamlsrc import YamlProblem, read_regular_file

__all__ = ["ExpertDecision", "ExpertTable", "PipelineDecision", "parse_decision", "load_decision",
           "dump_decision", "check_decision", "decision_to_json", "write_decision",
           "MAX_FILE_BYTES", "same_ids"]

_FIELDS = {k.name: k.kind for k in KNOBS}


@dataclass(frozen=True, slots=True)
class ExpertDecision:
    """One expert's knobs: ``replicas`` pods, ``cpu`` cores, ``memory_mb`` MiB, ``gpu_share``
    fraction of one GPU (0..1), ``concurrency`` OpenFaaS ``max_inflight`` (calls per replica)."""

    replicas: int
    cpu: float
    memory_mb: int
    gpu_share: float
    concurrency: int

    def with_knobs(self, replicas: int | None = None, cpu: float | None = None,
                   memory_mb: int | None = None, gpu_share: float | None = None,
                   concurrency: int | None = None) -> ExpertDecision:
        """A copy with the given knobs changed (what ``dataclasses.replace`` does, in a third of
        its time: the guards make one per adjusted expert, 15,000 a tick at deepseek-v3 size)."""
        return ExpertDecision(self.replicas if replicas is None else replicas,
                              self.cpu if cpu is None else cpu,
                              self.memory_mb if memory_mb is None else memory_mb,
                              self.gpu_share if gpu_share is None else gpu_share,
                              self.concurrency if concurrency is None else concurrency)


_KNOB_VALUES = attrgetter(*KNOB_NAMES)


def same_ids(nodes: Sequence[str], ids: tuple[str, ...]) -> bool:
    """Whether ``nodes`` are ``ids``, in order: at once where they are the same tuple (a
    decision holds its DAG's own ``dag.experts``, so the guards' lookups take this path tick
    after tick), else compared id by id."""
    return nodes is ids or (len(nodes) == len(ids) and tuple(nodes) == ids)


class ExpertTable(Mapping[str, ExpertDecision]):
    """Experts' knobs as columns: what the decider builds and the guards work on, so that no
    object per expert is made between them (15,000 of them a tick at deepseek-v3 size).

    ``nodes`` are the experts' ids and ``knobs`` a read-only float array of ``(len(nodes),
    5)``: each expert's knobs in :data:`~smoelib.core.knobs.KNOB_NAMES` order (the integer
    knobs hold whole numbers). As a mapping it is ``node id -> ExpertDecision``, the integer knobs
    as ints; the decisions are made once, the first time one is read."""

    __slots__ = ("nodes", "knobs", "_row", "_decisions")

    def __init__(self, nodes: Sequence[str], knobs: Any,
                 _row: dict[str, int] | None = None):
        self.nodes: tuple[str, ...] = tuple(nodes)
        v = np.array(knobs, float).reshape(len(self.nodes), len(KNOB_NAMES))  # a copy
        v.flags.writeable = False
        self.knobs: np.ndarray = v
        self._row = _row  # node -> row, shared by tables of the same nodes
        self._decisions: tuple[ExpertDecision, ...] | None = None

    @classmethod
    def of(cls, experts: Mapping[str, ExpertDecision]) -> ExpertTable:
        """``experts`` as a table (itself if it is one). Its knobs must be numbers that fit a
        float (what the ``refused`` guard checks first)."""
        if isinstance(experts, ExpertTable):
            return experts
        rows = list(map(_KNOB_VALUES, experts.values()))
        return cls(tuple(experts), np.array(rows, float).reshape(len(rows), len(KNOB_NAMES)))

    def replaced(self, knobs: np.ndarray) -> ExpertTable:
        """The same experts with ``knobs`` (copied)."""
        return ExpertTable(self.nodes, knobs, self._row)

    @property
    def row(self) -> Mapping[str, int]:
        """node id -> its row in ``knobs``."""
        if self._row is None:
            self._row = {n: i for i, n in enumerate(self.nodes)}
        return self._row

    def rows(self, nodes: Sequence[str]) -> np.ndarray:
        """The row of each of ``nodes`` (-1: not in the table)."""
        if same_ids(nodes, self.nodes):
            return np.arange(len(nodes))
        row = self.row
        return np.array([row.get(n, -1) for n in nodes], np.int64)

    def aligned(self, nodes: Sequence[str]) -> np.ndarray:
        """The knobs of ``nodes`` as rows (a copy; NaN for a node not in the table)."""
        if nodes is self.nodes:  # the table's own rows: no gather
            return self.knobs.copy()
        at = self.rows(nodes)
        out = self.knobs[np.maximum(at, 0)] if len(self.nodes) else np.full(
            (len(at), len(KNOB_NAMES)), np.nan)
        out[at < 0] = np.nan
        return out

    def _all(self) -> tuple[ExpertDecision, ...]:
        if self._decisions is None:
            v = self.knobs
            columns = []
            for j, integer in enumerate(INTEGER_KNOBS):
                col = v[:, j]
                if integer and np.isfinite(col).all() and (np.abs(col) < 2.0 ** 53).all():
                    columns.append(col.astype(np.int64).tolist())
                elif integer:  # not a whole number: kept as the float it is
                    columns.append([int(x) if math.isfinite(x) and x.is_integer() else x
                                    for x in col.tolist()])
                else:
                    columns.append(col.tolist())
            self._decisions = tuple(map(ExpertDecision, *columns))
        return self._decisions

    def __getitem__(self, node: str) -> ExpertDecision:
        return self._all()[self.row[node]]

    def __contains__(self, node: object) -> bool:
        return node in self.row

    def __iter__(self) -> Iterator[str]:
        return iter(self.nodes)

    def __len__(self) -> int:
        return len(self.nodes)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, ExpertTable) and other.nodes == self.nodes:
            return bool(np.array_equal(self.knobs, other.knobs))
        return super().__eq__(other)

    __hash__ = None  # type: ignore[assignment]  # a mapping

    def __repr__(self) -> str:
        return f"ExpertTable({len(self.nodes)} experts)"

    def __reduce__(self) -> tuple[Any, ...]:
        return (ExpertTable, (self.nodes, np.array(self.knobs)))


@dataclass(frozen=True, slots=True)
class PipelineDecision:
    """Every decided expert of one pipeline, stamped ``updated_at`` (Unix seconds)."""

    pipeline: str
    updated_at: float
    experts: Mapping[str, ExpertDecision]


def parse_decision(data: Any, *, source: str | None = None) -> PipelineDecision:
    """A decision from parsed JSON, every problem reported at once.

    Raises:
        ConfigError: missing or unknown keys, wrong types, out-of-range values.
    """
    problems: list[Problem] = []
    if not isinstance(data, Mapping):
        raise ConfigError([Problem("", "a decision is a JSON object")], source=source)
    for key in sorted(set(data) - {"pipeline", "updated_at", "experts"}):
        problems.append(Problem(key, "unknown key"))
    pipeline = data.get("pipeline")
    if not isinstance(pipeline, str) or not pipeline:
        problems.append(Problem("pipeline", "required: the pipeline's name"))
    updated = data.get("updated_at")
    if isinstance(updated, bool) or not isinstance(updated, int | float) or not math.isfinite(
            updated) or updated < 0:
        problems.append(Problem("updated_at", "required: Unix seconds >= 0"))
    experts_in = data.get("experts")
    experts: dict[str, ExpertDecision] = {}
    if not isinstance(experts_in, Mapping):
        problems.append(Problem("experts", "required: node id -> knobs"))
        experts_in = {}
    for node, knobs in experts_in.items():
        parsed = _expert(str(node), knobs, problems)
        if parsed is not None:
            experts[str(node)] = parsed
    if problems:
        raise ConfigError(problems, source=source)
    return PipelineDecision(pipeline=pipeline, updated_at=float(updated),
                            experts=MappingProxyType(experts))


MAX_FILE_BYTES = 16 * 1024 * 1024
"""The largest decision file read (a deepseek-v3 scale decision is about 1.5 MB)."""


def load_decision(path: str | Path) -> PipelineDecision:
    """Read and parse a decision file.

    Raises:
        ConfigError: unreadable, not a regular file, too large, not UTF-8, not JSON, or not
            a valid decision; one problem per line, naming the file.
    """
    try:
        raw = read_regular_file(path, limit=MAX_FILE_BYTES, what="decision file")
    except YamlProblem as e:
        raise ConfigError([e.problem], source=str(path)) from None
    try:
        data = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as e:
        raise ConfigError([Problem("", f"not UTF-8 text (byte {e.start})")],
                          source=str(path)) from None
    except json.JSONDecodeError as e:
        raise ConfigError([Problem("", f"not JSON: {e.msg}", e.lineno)], source=str(path)) from e
    return parse_decision(data, source=str(path))


def check_decision(decision: PipelineDecision, *, pipeline: str, experts: Collection[str],
                   source: str | None = None,
                   bounds: Mapping[str, tuple[int, int]] | None = None,
                   now: float | None = None, clock_skew_s: float = 30.0) -> None:
    """Refuse a decision that belongs to another pipeline, names nodes that are not experts,
    asks for replicas outside an expert's bounds, or is dated in the future.

    Args:
        decision: a parsed decision.
        pipeline: the name of the pipeline it must belong to.
        experts: that pipeline's expert node ids; experts it omits simply have no decision.
        bounds: per expert, ``(replicas.min, replicas.max)`` of the pipeline.
        now: the reader's clock (Unix seconds); with it, a decision dated more than
            ``clock_skew_s`` ahead is refused (it would never go stale).

    Raises:
        ConfigError: each problem named.
    """
    problems: list[Problem] = []
    if decision.pipeline != pipeline:
        problems.append(Problem("pipeline", f"is {decision.pipeline!r}: this file belongs to "
                                            f"another pipeline than {pipeline!r}"))
    known = experts if isinstance(experts, set | frozenset | Mapping) else frozenset(experts)
    for node, e in decision.experts.items():
        if node not in known:
            problems.append(Problem(f"experts.{node}", f"not an expert of pipeline {pipeline!r}"))
        elif bounds is not None and node in bounds:
            lo, hi = bounds[node]
            if not lo <= e.replicas <= hi:
                problems.append(Problem(f"experts.{node}.replicas", f"{e.replicas} is outside "
                                        f"the pipeline's bounds [{lo}, {hi}]"))
    if now is not None and decision.updated_at > now + clock_skew_s:
        problems.append(Problem("updated_at", f"{decision.updated_at - now:.0f} s in the future "
                                f"(more than the {clock_skew_s:g} s clock-skew allowance): "
                                "it would never go stale"))
    if problems:
        raise ConfigError(problems, source=source)


def decision_to_json(decision: PipelineDecision) -> str:
    """The decision file's text: JSON, experts in the decision's order, newline-terminated."""
    return json.dumps(dump_decision(decision), indent=1, allow_nan=False) + "\n"


def write_decision(path: str | Path, decision: PipelineDecision) -> None:
    """Write the decision file atomically: a reader sees the old file or the new one, whole.

    The text goes to a temporary file in the same directory, is fsynced, renamed over ``path``
    (``os.replace``), and the directory is fsynced so the rename survives a crash.

    Raises:
        OSError: the directory is missing or not writable, the disk is full, ...
    """
    target = Path(path)
    text = decision_to_json(decision).encode()
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    dir_fd = os.open(target.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def dump_decision(decision: PipelineDecision) -> dict[str, Any]:
    """The decision as JSON-ready data (the inverse of :func:`parse_decision`)."""
    return {"pipeline": decision.pipeline, "updated_at": decision.updated_at,
            "experts": {n: {k: getattr(e, k) for k in _FIELDS}
                        for n, e in decision.experts.items()}}


def _expert(node: str, knobs: Any, problems: list[Problem]) -> ExpertDecision | None:
    where = f"experts.{node}"
    if not isinstance(knobs, Mapping):
        problems.append(Problem(where, "knobs must be an object"))
        return None
    before = len(problems)
    for key in sorted(set(knobs) - set(_FIELDS)):
        problems.append(Problem(f"{where}.{key}", "unknown key"))
    values: dict[str, Any] = {}
    for key, kind in _FIELDS.items():
        v = knobs.get(key)
        ok = (not isinstance(v, bool) and isinstance(v, int | float) and math.isfinite(v)
              and (kind is float or float(v).is_integer()))
        if not ok:
            what = "a number" if kind is float else "an integer"
            got = "missing" if key not in knobs else f"got {v!r}"
            problems.append(Problem(f"{where}.{key}", f"required: {what} ({got})"))
            continue
        values[key] = kind(v)
    if len(problems) > before:
        return None
    for key in ("replicas",):
        if values[key] < 0:
            problems.append(Problem(f"{where}.{key}", "must be >= 0"))
    for key in ("cpu", "memory_mb", "concurrency"):
        if values[key] <= 0:
            problems.append(Problem(f"{where}.{key}", "must be > 0"))
    if not 0.0 <= values["gpu_share"] <= 1.0:
        problems.append(Problem(f"{where}.gpu_share", "must be within [0, 1]"))
    return None if len(problems) > before else ExpertDecision(**values)
