"""The model-based plan a residual policy's replica choices are relative to
(``PolicyConfig.replica_base``): a registered decider, ``queueing``, deciding on the same
observation every tick. The policy then learns corrections to a queueing bound instead of a
sizing from scratch; cloning that teacher is the zero correction.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from smoelib.policy.base import get_decider
from smoelib.policy.config import PolicyConfig

__all__ = ["ReplicaPlanner", "planner_for"]


class ReplicaPlanner:
    """The plan's replicas per node for each observation (NaN where it has no expert).

    Args:
        name: the registered decider that plans (``PolicyConfig.replica_base``).
        dag: the pipeline.
        settings: the run's settings (the planner sizes with them).
    """

    def __init__(self, name: str, *, dag: Any, settings: Any):
        self.name, self.dag = name, dag
        self.decider = get_decider(name, dag=dag, settings=settings)

    def reset(self, seed: int) -> None:
        self.decider.reset(seed)

    def replicas(self, observation: Any) -> np.ndarray:
        """``(N,)`` in ``dag.nodes`` order."""
        experts = self.decider.decide(observation).experts
        return np.array([experts[n].replicas if n in experts else np.nan
                         for n in self.dag.nodes], dtype=float)


def planner_for(config: PolicyConfig, *, dag: Any, settings: Any) -> ReplicaPlanner | None:
    """The planner a policy of ``config`` needs, or None when its changes are relative to the
    current replicas."""
    if config.replica_base == "current":
        return None
    return ReplicaPlanner(config.replica_base, dag=dag, settings=settings)
