"""The simulated backend through its two-method port, plus units and live-state parsing."""

from __future__ import annotations

import time

import pytest

from smoelib.core.decisions import ExpertDecision
from smoelib.vertical import PlanRules, plan_patches
from smoelib.vertical.backends.base import apply_plan
from smoelib.vertical.backends.simulated import SimulatedBackend
from smoelib.vertical.units import format_cpu, format_memory, parse_cpu, parse_memory_mb

FNS = {"moe1/e0": "f0", "moe1/e1": "f1"}


class TinySim:
    """The VerticalTarget protocol and nothing more: knobs per function, a log of changes."""

    def __init__(self):
        self.functions = {f: {"cpu": 1.0, "memory_mb": 2048, "gpu_share": 0.25, "concurrency": 4,
                              "replicas": 2, "ready_replicas": 2} for f in FNS.values()}
        self.log = []

    def vertical_state(self, function):
        return self.functions.get(function)

    def apply_vertical(self, function, changes, *, in_place):
        self.log.append((function, dict(changes), in_place))
        self.functions[function].update(changes)


def apply(sim, experts):
    backend = SimulatedBackend(sim)
    rules = PlanRules()

    def replan(only=None):
        names = sorted(f for f in FNS.values() if only is None or f in only)
        return plan_patches({n: e for n, e in experts.items() if FNS[n] in names},
                            backend.read_state("p", "openfaas-fn", names), functions=FNS,
                            rules=rules, now=time.time())

    return apply_plan(replan(), backend, replan=replan, conflict_retries=1, resize_watch_s=0)


def test_cpu_resizes_in_place_and_slow_knobs_roll_out():
    sim = TinySim()
    report = apply(sim, {"moe1/e0": ExpertDecision(2, 2.0, 2048, 0.25, 4),
                         "moe1/e1": ExpertDecision(2, 1.0, 2048, 0.5, 8)})
    assert report.failed == ()
    assert sim.log == [("f0", {"cpu": 2.0}, True),
                       ("f1", {"gpu_share": 0.5, "concurrency": 8}, False)]
    sim.log.clear()
    apply(sim, {"moe1/e0": ExpertDecision(2, 2.0, 2048, 0.25, 4)})
    assert sim.log == []


def test_an_unknown_function_is_noted():
    sim = TinySim()
    del sim.functions["f1"]
    report = apply(sim, {"moe1/e1": ExpertDecision(2, 1.0, 2048, 0.5, 8)})
    assert report.outcomes == () and "f1: not planned" in report.notes[0]


@pytest.mark.parametrize("text,cores", [("500m", 0.5), ("2", 2.0), ("1.5", 1.5), (3, 3.0)])
def test_cpu_quantities(text, cores):
    assert parse_cpu(text) == cores
    assert parse_cpu(format_cpu(cores)) == cores


@pytest.mark.parametrize("text,mb", [("2Gi", 2048), ("1536Mi", 1536), ("1G", 954),
                                     ("134217728", 128)])
def test_memory_quantities(text, mb):
    assert parse_memory_mb(text) == mb
    assert parse_memory_mb(format_memory(mb)) == mb


def test_bad_quantity_is_refused():
    with pytest.raises(ValueError, match="not a Kubernetes quantity"):
        parse_cpu("two")
