"""``static``: every expert at its pipeline defaults, ``max(1, replicas_min)`` replicas.

A fixed reference (and the simulator's first policy, before the baselines exist).
"""

from __future__ import annotations

from types import MappingProxyType
from typing import Any

from smoelib.core.decisions import ExpertDecision, PipelineDecision
from smoelib.policy.base import register

__all__ = ["StaticDecider"]


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
