"""Show (and with --apply, apply) the patches a decision file needs against the live functions.

Like ``kubectl diff``: prints the plan as YAML (each patch's target, why, what changes, and the
body sent). ``--apply`` sends it as given: hysteresis and rollout budgets belong to the control
loop, not to an operator's explicit command. A second identical run plans nothing. Exits 2 on
bad input, 1 when any patch failed (each failure names its object), 0 otherwise.
"""

from __future__ import annotations

import argparse
import sys
import time

from smoelib.core.decisions import check_decision, load_decision
from smoelib.errors import EXIT_FAILED, PermanentError, TransientError
from smoelib.pipeline.topology import build_dag
from smoelib.settings import load_settings
from smoelib.vertical.backends.base import apply_plan
from smoelib.vertical.factory import make_backend
from smoelib.vertical.planner import Plan, PlanRules, plan_patches
from smoelib.vertical.planner_yaml import plan_to_yaml


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--pipeline", required=True, metavar="PIPELINE",
                        help="pipeline.yml naming the expert functions")
    parser.add_argument("--decisions", required=True, metavar="FILE", help="decision file (JSON)")
    parser.add_argument("--config", metavar="CONFIG", help="config.yaml (default: built-in)")
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--kubeconfig", metavar="K",
                       help="kubernetes backend with this kubeconfig (default: vertical.backend)")
    where.add_argument("--gateway", metavar="URL", help="openfaas-gateway backend at URL")
    parser.add_argument("--stack", metavar="STACK",
                        help="stack.yml with every function's full spec (gateway backend)")
    parser.add_argument("--apply", action="store_true", help="apply the plan")


def run(args: argparse.Namespace) -> int:
    settings = load_settings(args.config)
    dag = build_dag(config=args.pipeline, validate=True, attach_metadata=True)
    decision = load_decision(args.decisions)
    check_decision(decision, pipeline=dag.name, experts=dag.experts, source=args.decisions)
    functions = {n: dag.function_name(n) for n in dag.experts}
    kind = ("openfaas-gateway" if args.gateway else "kubernetes" if args.kubeconfig
            else settings.vertical.backend)
    backend = make_backend(settings, functions=sorted(functions.values()),
                           namespace=dag.namespace, kind=kind, kubeconfig=args.kubeconfig,
                           gateway=args.gateway, stack=args.stack)
    rules = PlanRules.from_settings(settings, dag=dag)

    def replan(only: frozenset[str] | None = None) -> Plan:
        wanted = {n: d for n, d in decision.experts.items()
                  if only is None or functions.get(n) in only}
        names = sorted({functions[n] for n in wanted if n in functions})
        state = backend.read_state(dag.name, dag.namespace, names)
        return plan_patches(wanted, state, functions=functions, rules=rules, now=time.time())

    try:
        plan = replan()
    except (PermanentError, TransientError) as e:  # the API, not the input
        print(f"error: {e}", file=sys.stderr)
        return EXIT_FAILED
    print(plan_to_yaml(plan, pipeline=dag.name), end="")
    if not args.apply or not plan.patches:
        return 0
    report = apply_plan(plan, backend, replan=replan,
                        conflict_retries=settings.vertical.conflict_retries,
                        resize_watch_s=settings.vertical.resize_watch_s)
    for outcome in report.outcomes:
        line = f"{outcome.status}: {outcome.patch.target}"
        sub = outcome.patch.subresource
        line += f" ({sub})" if sub else ""
        print(line + (f": {outcome.message}" if outcome.message else ""),
              file=sys.stderr if outcome.status == "failed" else sys.stdout)
    for note in report.notes[len(plan.notes):]:
        print(f"note: {note}", file=sys.stderr)
    return EXIT_FAILED if report.failed else 0
