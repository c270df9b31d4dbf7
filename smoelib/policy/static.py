"""``static``: every expert at its pipeline defaults, ``max(1, replicas_min)`` replicas.
``shield-only``: the cheapest configuration everywhere, under the ``production`` guards, so
that the shield (:mod:`smoelib.core.shield`) alone decides the replicas: what the shield
achieves by itself, the bar a learned policy must clear.

A fixed reference (and the simulator's first policy, before the baselines exist).
"""

from __future__ import annotations

from types import MappingProxyType
from typing import Any

from smoelib.core.decisions import ExpertDecision, PipelineDecision
from smoelib.core.service import memory_choice, memory_floor_mb
from smoelib.policy.base import register

__all__ = ["StaticDecider", "ShieldOnly"]


@register("static")
class StaticDecider:
    """Always the same decision: each expert's ``cpu``, ``memory_mb``, ``gpu_share`` and
    ``concurrency`` from ``pipeline.yml`` and ``max(1, replicas_min)`` replicas."""

    def __init__(self, *, dag, settings=None):
        experts = {}
        for node in dag.experts:
            s = dag.spec(node)
            experts[node] = ExpertDecision(replicas=max(1, s.replicas_min), cpu=s.cpu,
                                           memory_mb=s.memory_mb, gpu_share=s.gpu_share,
                                           concurrency=s.concurrency)
        self.pipeline = dag.name
        self.experts = MappingProxyType(experts)

    def reset(self, seed: int) -> None:
        """Nothing to reset: the decision never changes."""

    def decide(self, observation: Any) -> PipelineDecision:
        """The fixed decision, stamped with the observation's time (seconds)."""
        return PipelineDecision(pipeline=self.pipeline,
                                updated_at=float(getattr(observation, "time_s", 0.0)),
                                experts=self.experts)


@register("shield-only")
class ShieldOnly(StaticDecider):
    """The cheapest configuration everywhere: one replica (or ``replicas_min``, if higher), the
    smallest CPU and GPU share of ``settings.actions``, the memory floor (runtime + weights);
    the pipeline's ``max_inflight`` (a slow knob, which the shield never changes). The shield
    lifts the replicas the load needs (module docstring)."""

    def __init__(self, *, dag, settings):
        super().__init__(dag=dag, settings=settings)
        a = settings.actions
        shares = [x for x in a.gpu_share if x > 0]
        cheap = {}
        for node, e in self.experts.items():
            spec = dag.spec(node)
            floor = memory_floor_mb(spec, runtime_memory_mb=settings.cluster.runtime_memory_mb)
            cheap[node] = e.with_knobs(
                cpu=min(a.cpu), memory_mb=memory_choice(floor, a.memory_mb),
                gpu_share=min(shares) if e.gpu_share > 0 and shares else e.gpu_share)
        self.experts = MappingProxyType(cheap)
