"""Vertical scaling of expert functions: CPU, memory, GPU share and ``max_inflight``.

The planner (:func:`plan_patches`) is pure: a decision and the live state in, patch records out.
The control loop's slow-knob rules (hysteresis, rollout budget) run before it, in the tick
(:mod:`smoelib.core.slow_knobs`). Backends in :mod:`smoelib.vertical.backends` send the
patches; :func:`plan_to_yaml` prints them.
"""

from smoelib.vertical.planner import Plan, PlanRules, check_scope, plan_patches
from smoelib.vertical.planner_yaml import plan_to_yaml
from smoelib.vertical.records import (
    FunctionState,
    Knobs,
    ObjectRef,
    Patch,
    PipelineState,
    PodState,
)

__all__ = ["plan_patches", "Plan", "PlanRules", "check_scope", "plan_to_yaml", "Patch",
           "ObjectRef", "Knobs", "PodState", "FunctionState", "PipelineState"]
