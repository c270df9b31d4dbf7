"""The vertical module inside the control loop: plan the guarded decision, apply it.

The decision arrives guarded by the tick (:mod:`smoelib.core.tick`): slow knobs already held by
hysteresis and the rollout budget. The first attempt and every retry (a 409 re-plan, a stuck
in-place resize that falls back to a rollout) plan that same decision, so a held change never
leaks through a retry. ``smoe plan`` (an operator's explicit command) applies a decision as
given, without the tick.
"""

from __future__ import annotations

import logging

from smoelib.core.decisions import PipelineDecision
from smoelib.core.ports import Feedback
from smoelib.errors import PermanentError, TransientError
from smoelib.pipeline.topology import PipelineDAG
from smoelib.settings import Settings
from smoelib.vertical.backends.base import Backend, apply_plan
from smoelib.vertical.planner import Plan, PlanRules, plan_patches
from smoelib.vertical.planner_yaml import plan_to_yaml

__all__ = ["VerticalLoop"]

log = logging.getLogger("smoelib.vertical")


class VerticalLoop:
    """Plans and applies one pipeline's vertical knobs, tick after tick.

    Args:
        dag: the pipeline; only its experts' functions are ever touched.
        backend: the one writer of those functions.
        settings: planner rules, conflict retries, resize watch.
    """

    def __init__(self, dag: PipelineDAG, backend: Backend, settings: Settings):
        self.dag = dag
        self.backend = backend
        self.settings = settings
        self.functions = {n: dag.function_name(n) for n in dag.experts}
        self.plan_rules = PlanRules.from_settings(settings, dag=dag)

    def apply(self, decision: PipelineDecision, *, now: float, dry_run: bool = False
              ) -> Feedback:
        """Plan the patches ``decision`` needs now and send them unless ``dry_run`` (then the
        plan is logged as YAML). API failures are reported in the feedback, not raised."""
        names = sorted(self.functions.values())
        try:
            state = self.backend.read_state(self.dag.name, self.dag.namespace, names)
        except (TransientError, PermanentError) as e:
            return Feedback(notes=(f"vertical: cannot read the cluster ({e}); no patches this "
                                   "tick",), failures=(("vertical", f"cannot read: {e}"),))
        plan = plan_patches(decision.experts, state, functions=self.functions,
                            rules=self.plan_rules, now=now)
        if dry_run:
            if plan.patches:
                log.info("dry run, would apply:\n%s", plan_to_yaml(plan, pipeline=self.dag.name,
                                                                     with_body=False))
            return Feedback(notes=plan.notes, patches=len(plan.patches))
        if not plan.patches:
            return Feedback(notes=plan.notes)

        def replan(only: frozenset[str]) -> Plan:
            wanted = {n: d for n, d in decision.experts.items() if self.functions.get(n) in only}
            fresh = self.backend.read_state(self.dag.name, self.dag.namespace, sorted(only))
            return plan_patches(wanted, fresh, functions=self.functions, rules=self.plan_rules,
                                now=now)

        v = self.settings.vertical
        report = apply_plan(plan, self.backend, replan=replan,
                            conflict_retries=v.conflict_retries, resize_watch_s=v.resize_watch_s)
        notes = list(report.notes)
        failures = []
        for outcome in report.failed:
            notes.append(f"vertical: {outcome.patch.target} failed: {outcome.message}")
            failures.append(("vertical", f"{outcome.patch.target}: {outcome.message}"))
            log.warning("vertical: %s failed: %s", outcome.patch.target, outcome.message)
        rollouts = tuple((o.patch.function, o.patch.pods_replaced) for o in report.outcomes
                         if o.status == "applied" and o.patch.rollout)
        return Feedback(notes=tuple(notes), patches=len(plan.patches), rollouts=rollouts,
                        failures=tuple(failures))
