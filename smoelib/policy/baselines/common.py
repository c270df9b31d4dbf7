"""What every baseline shares: the experts as arrays, decisions, prices, service times.

Also the two small hooks the evaluation harness reads from a decider (docs/baselines.md):

- ``simulator_overrides``: a mapping of dotted settings paths (``"simulator.hpa_preset"``) to
  the values the decider's model needs from the simulated cluster; :func:`with_overrides`
  applies it. Baselines that run their own autoscaler hand the simulator their replica counts
  through the pass-through (``smoe``) HPA preset, so no HPA behaviour is applied twice.
- ``see_future(future)``: only ``oracle`` and ``static-peak`` have it; the harness calls it after
  ``reset`` with a :class:`Hindsight` of the episode's true offered load.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

import numpy as np

from smoelib.core.decisions import ExpertDecision, PipelineDecision
from smoelib.core.service import (
    full_gpu_interference,
    memory_choice,
    memory_floor_mb,
    service_models,
)
from smoelib.settings import Settings

__all__ = ["Experts", "Hindsight", "decide_all", "service_ms",
           "with_overrides", "PASS_THROUGH", "on_period"]

PASS_THROUGH: Mapping[str, Any] = MappingProxyType({
    "simulator.hpa_preset": "smoe", "cluster.hpa_configurable_tolerance": True})


@dataclass(frozen=True)
class Hindsight:
    """The true offered load of an episode, per control tick (``dt`` seconds) and expert
    (:attr:`Experts.nodes` order): ``calls`` per second and ``tokens`` per second."""

    dt: float
    calls: np.ndarray   # (ticks, experts)
    tokens: np.ndarray  # (ticks, experts)


class Experts:
    """A pipeline's experts as arrays (``nodes`` order = ``dag.experts``).

    ``index``: positions in ``dag.nodes`` (the observation's order); ``layer``: MoE layer
    index per expert; ``layers``: expert positions per layer; bounds, profiles, parallelism.
    """

    def __init__(self, dag):
        self.pipeline = dag.name
        self.nodes = tuple(dag.experts)
        pos = {n: i for i, n in enumerate(dag.nodes)}
        self.index = np.array([pos[n] for n in self.nodes], dtype=np.int64)
        specs = [dag.spec(n) for n in self.nodes]
        self.rmin = np.array([s.replicas_min for s in specs], dtype=np.int64)
        self.rmax = np.array([s.replicas_max for s in specs], dtype=np.int64)
        self.specs = specs
        self._models: tuple[int, list] | None = None
        self.parallelism = np.array([max(1, s.parallelism) for s in specs], dtype=np.int64)
        self.default = {k: np.array([getattr(s, k) for s in specs], dtype=float)
                        for k in ("cpu", "memory_mb", "gpu_share", "concurrency")}
        of = {n: li for li, (_, members) in enumerate(dag.moe_layers.items()) for n in members}
        self.layer = np.array([of[n] for n in self.nodes], dtype=np.int64)
        self.layers = [np.flatnonzero(self.layer == li) for li in range(len(dag.moe_layers))]
        self.slo_ms = float(dag.slo_ms)
        self.slo = dag.slo
        self.dag = dag

    def __len__(self) -> int:
        return len(self.nodes)

    def models(self, settings: Settings) -> list:
        """Per expert its :class:`~smoelib.core.service.ServiceModel` under ``settings``."""
        if self._models is None or self._models[0] != id(settings):
            every = service_models(self.dag, settings)
            self._models = (id(settings), [every[i] for i in self.index])
        return self._models[1]

    def memory_floor(self, settings: Settings) -> np.ndarray:
        """Per expert the least memory choice a replica runs in (runtime plus weights)."""
        run = settings.cluster.runtime_memory_mb
        return np.array([memory_choice(memory_floor_mb(s, runtime_memory_mb=run),
                                       settings.actions.memory_mb) for s in self.specs], float)


def decide_all(ex: Experts, t: float, *, replicas, cpu, memory_mb, gpu_share, concurrency
               ) -> PipelineDecision:
    """A decision for every expert from per-expert arrays (or scalars)."""
    b = np.broadcast_arrays(np.asarray(replicas), np.asarray(cpu), np.asarray(memory_mb),
                            np.asarray(gpu_share), np.asarray(concurrency),
                            np.zeros(len(ex)))
    experts = {n: ExpertDecision(replicas=int(b[0][i]), cpu=float(b[1][i]),
                                 memory_mb=int(b[2][i]), gpu_share=float(b[3][i]),
                                 concurrency=int(b[4][i])) for i, n in enumerate(ex.nodes)}
    return PipelineDecision(pipeline=ex.pipeline, updated_at=float(t),
                            experts=MappingProxyType(experts))


def service_ms(ex: Experts, settings: Settings, *, tokens, gpu_share, cpu,
               interference: bool = True, calls=1) -> np.ndarray:
    """Mean service time (ms) of a batch of ``calls`` calls carrying ``tokens`` tokens
    (experts on the first axis), the simulator's model
    (:meth:`~smoelib.core.service.ServiceModel.batch_ms`); MPS interference assumes the rest of
    a full GPU (``1 - share``) is busy when ``interference``."""
    sim = settings.simulator
    tokens = np.asarray(tokens, float)
    nd = max(tokens.ndim, np.ndim(gpu_share), np.ndim(cpu), 1)
    share = np.broadcast_to(np.asarray(gpu_share, float), np.broadcast_shapes(
        (len(ex),) + (1,) * (nd - 1), tokens.shape, np.shape(gpu_share), np.shape(cpu)))
    cpu = np.broadcast_to(np.asarray(cpu, float), share.shape)
    tokens = np.broadcast_to(tokens, share.shape)
    calls = np.broadcast_to(np.asarray(calls, float), share.shape)
    inter = full_gpu_interference(share, sim.mps_interference) \
        if interference else np.ones(share.shape)
    out = np.empty(share.shape)
    for i, model in enumerate(ex.models(settings)):
        out[i] = model.batch_ms(calls[i], tokens[i], cpu=cpu[i], share=share[i],
                                parallelism=int(ex.parallelism[i]), interference=inter[i])
    return out


def with_overrides(settings: Settings, overrides: Mapping[str, Any]) -> Settings:
    """``settings`` with dotted-path values replaced (``{"simulator.hpa_preset": "smoe"}``)."""
    for path, value in overrides.items():
        settings = _replace(settings, path.split("."), value)
    return settings


def _replace(obj: Any, path: list[str], value: Any) -> Any:
    if len(path) == 1:
        return dataclasses.replace(obj, **{path[0]: value})
    return dataclasses.replace(obj, **{path[0]: _replace(getattr(obj, path[0]), path[1:], value)})


def on_period(t: float, period: float) -> bool:
    """Whether ``t`` (s) is a multiple of ``period`` (s)."""
    return abs(t / period - round(t / period)) < 1e-6
