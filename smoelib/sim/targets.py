"""A decision as per-node target arrays, checked against the DAG and the action space."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from smoelib.core.knobs import KNOB_NAMES
from smoelib.errors import ConfigError, Problem
from smoelib.settings import Settings

__all__ = ["Targets", "defaults", "from_decision"]



@dataclass(frozen=True)
class Targets:
    """Per node (``dag.nodes`` order): replicas, cpu (cores), memory_mb (MiB), gpu_share
    (fraction), concurrency (calls). ``decided`` marks nodes the decision covers."""

    replicas: np.ndarray
    cpu: np.ndarray
    memory_mb: np.ndarray
    gpu_share: np.ndarray
    concurrency: np.ndarray
    decided: np.ndarray


def defaults(dag) -> Targets:
    """Every node at its pipeline defaults, ``max(1, replicas_min)`` replicas (joins: 0)."""
    specs = [dag.spec(n) for n in dag.nodes]
    fn = np.array([s.function is not None for s in specs])
    return Targets(
        replicas=np.where(fn, [max(1, s.replicas_min) for s in specs], 0).astype(np.int64),
        cpu=np.array([s.cpu for s in specs], float),
        memory_mb=np.array([s.memory_mb for s in specs], float),
        gpu_share=np.array([s.gpu_share for s in specs], float),
        concurrency=np.array([s.concurrency for s in specs], np.int64),
        decided=np.zeros(len(specs), bool))


def _bounds(dag, node: str, settings: Settings) -> dict[str, tuple[float, float]]:
    s = dag.spec(node)
    a = settings.actions

    def span(choices: tuple, default: float) -> tuple[float, float]:
        return min(*choices, default), max(*choices, default)

    return {"replicas": (s.replicas_min, s.replicas_max), "cpu": span(a.cpu, s.cpu),
            "memory_mb": span(a.memory_mb, s.memory_mb), "gpu_share": (0.0, 1.0),
            "concurrency": span(a.concurrency, s.concurrency)}


def from_decision(decision: Any, dag, settings: Settings, base: Targets) -> Targets:
    """Targets from a ``PipelineDecision`` (``.experts``: node id -> knobs); nodes it omits
    keep ``base``.

    Raises:
        ConfigError: an unknown or non-expert node, a missing, NaN or out-of-bound value;
            every problem names the expert and the field.
    """
    index = {n: i for i, n in enumerate(dag.nodes)}
    out = {k: getattr(base, k).copy() for k in KNOB_NAMES}
    decided = np.zeros(len(dag.nodes), bool)
    problems: list[Problem] = []
    experts = getattr(decision, "experts", None)
    if experts is None:
        raise ConfigError([Problem("experts", "decision has no experts mapping")])
    for node, knobs in experts.items():
        where = f"experts.{node}"
        if node not in index or dag.spec(node).kind != "expert":
            problems.append(Problem(where, f"unknown expert {node!r} in pipeline {dag.name!r}"))
            continue
        bounds = _bounds(dag, node, settings)
        for k in KNOB_NAMES:
            v = knobs.get(k) if isinstance(knobs, dict) else getattr(knobs, k, None)
            if v is None or isinstance(v, bool) or not isinstance(v, int | float | np.number):
                problems.append(Problem(f"{where}.{k}", f"must be a number, got {v!r}"))
                continue
            if not math.isfinite(float(v)):
                problems.append(Problem(f"{where}.{k}", f"must be finite, got {v!r}"))
                continue
            lo, hi = bounds[k]
            if not lo - 1e-9 <= float(v) <= hi + 1e-9:
                problems.append(Problem(f"{where}.{k}", f"{v!r} is outside [{lo:g}, {hi:g}]"))
                continue
            if k in ("replicas", "concurrency") and not float(v).is_integer():
                problems.append(Problem(f"{where}.{k}", f"must be an integer, got {v!r}"))
                continue
            out[k][index[node]] = v
        decided[index[node]] = True
    if problems:
        raise ConfigError(problems, source="decision")
    return Targets(**out, decided=decided)


def reference_cost(dag, settings: Settings) -> float:
    """Cost of one control tick of ``dag`` at its pipeline defaults (currency): the unit
    rewards are measured in, so that one reward scale serves pipelines of any size."""
    from smoelib.core.accounting import price_per_hour

    d = defaults(dag)
    per_h = price_per_hour(settings, cpu=d.cpu, memory_mb=d.memory_mb, gpu_share=d.gpu_share)
    return float((d.replicas * per_h).sum()) * settings.control.interval_s / 3600.0
