"""The vertical module inside the control loop: hysteresis, rollout budget, plan, apply.

Keeps the :class:`~smoelib.vertical.safety.SafetyMemory` between ticks; ``smoe plan`` (an
operator's explicit command) bypasses all of this and applies a decision as given.
"""

from __future__ import annotations

import logging
from typing import Any

from smoelib.core.decisions import PipelineDecision
from smoelib.errors import PermanentError, TransientError
from smoelib.pipeline.topology import PipelineDAG
from smoelib.settings import Settings
from smoelib.vertical.backends.base import Backend, apply_plan
from smoelib.vertical.planner import Plan, PlanRules, plan_patches
from smoelib.vertical.planner_yaml import plan_to_yaml
from smoelib.vertical.safety import SafetyMemory, SafetyRules, guarded_plan

__all__ = ["VerticalLoop"]

log = logging.getLogger("smoelib.vertical")


class VerticalLoop:
    """Plans and applies one pipeline's vertical knobs, tick after tick.

    Args:
        dag: the pipeline; only its experts' functions are ever touched.
        backend: the one writer of those functions.
        settings: planner and safety rules, conflict retries, resize watch.
    """

    def __init__(self, dag: PipelineDAG, backend: Backend, settings: Settings):
        self.dag = dag
        self.backend = backend
        self.settings = settings
        self.functions = {n: dag.function_name(n) for n in dag.experts}
        self.plan_rules = PlanRules.from_settings(settings)
        self.rules = SafetyRules.from_settings(settings)
        self.memory = SafetyMemory()

    @classmethod
    def from_settings(cls, dag: PipelineDAG, settings: Settings, *, kind: str | None = None,
                      sim_target: Any = None) -> VerticalLoop:
        """The loop over the configured backend (or ``kind``; ``sim_target`` for simulated)."""
        from smoelib.vertical.factory import make_backend

        backend = make_backend(settings, functions=sorted(_functions(dag)),
                               namespace=dag.namespace, kind=kind, sim_target=sim_target)
        return cls(dag, backend, settings)

    def apply(self, decision: PipelineDecision, *, now: float, dry_run: bool
              ) -> tuple[list[str], int]:
        """Plan the patches ``decision`` needs now (after hysteresis and the rollout budget)
        and send them unless ``dry_run`` (then the plan is logged as YAML). Returns the notes
        and the number of patches planned. API failures are reported, not raised."""
        names = sorted(self.functions.values())
        try:
            state = self.backend.read_state(self.dag.name, self.dag.namespace, names)
        except (TransientError, PermanentError) as e:
            return [f"vertical: cannot read the cluster ({e}); no patches this tick"], 0
        plan, memory = guarded_plan(decision.experts, state, self.memory,
                                    functions=self.functions, plan_rules=self.plan_rules,
                                    rules=self.rules, now=now)
        if dry_run:
            if plan.patches:
                log.info("dry run, would apply:\n%s", plan_to_yaml(plan, pipeline=self.dag.name,
                                                                     with_body=False))
            return list(plan.notes), len(plan.patches)
        self.memory = memory
        if not plan.patches:
            return list(plan.notes), 0

        def replan(only: frozenset[str]) -> Plan:
            wanted = {n: d for n, d in decision.experts.items() if self.functions.get(n) in only}
            fresh = self.backend.read_state(self.dag.name, self.dag.namespace, sorted(only))
            return plan_patches(wanted, fresh, functions=self.functions, rules=self.plan_rules,
                                now=now)

        v = self.settings.vertical
        report = apply_plan(plan, self.backend, replan=replan,
                            conflict_retries=v.conflict_retries, resize_watch_s=v.resize_watch_s)
        notes = list(report.notes)
        for outcome in report.failed:
            notes.append(f"vertical: {outcome.patch.target} failed: {outcome.message}")
            log.warning("vertical: %s failed: %s", outcome.patch.target, outcome.message)
        return notes, len(plan.patches)


def _functions(dag: PipelineDAG) -> list[str]:
    return [dag.function_name(n) for n in dag.experts]
