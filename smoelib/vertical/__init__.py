"""Vertical scaling of expert functions: CPU, memory, GPU share and ``max_inflight``.

The planner (:func:`plan_patches`) is pure: a decision and the live state in, patch records out.
:func:`guarded_plan` adds the control loop's safety (hysteresis, rollout budget). Backends in
:mod:`smoelib.vertical.backends` send the patches; :func:`plan_to_yaml` prints them.
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
from smoelib.vertical.safety import SafetyMemory, SafetyRules, guarded_plan

__all__ = ["plan_patches", "Plan", "PlanRules", "check_scope", "guarded_plan", "SafetyRules",
           "SafetyMemory", "plan_to_yaml", "Patch", "ObjectRef", "Knobs", "PodState",
           "FunctionState", "PipelineState"]
