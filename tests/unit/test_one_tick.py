"""One tick everywhere: the controller, the evaluation driver, the training rollout and ``smoe
simulate`` apply the same guarded decisions, tick for tick, to the same simulated cluster.

The decider is scripted to trip every production rule (replica jumps for the step limits, a
slow-knob change proposed often enough to pass hysteresis and then rationed by the rollout
budget, an oscillation the hysteresis must swallow, a busy expert proposed at zero). Each driver
starts from the same seed, so identical decisions give identical observations and identical
actuator feedback; a driver that applied other rules would diverge at the first tick it did.
"""

from __future__ import annotations

import math
from types import MappingProxyType

import pytest
import torch
from prometheus_client import CollectorRegistry

from smoelib.commands.simulate import simulate
from smoelib.control.controller import SMoEController
from smoelib.core.decisions import ExpertDecision, PipelineDecision
from smoelib.harness.embedded import EmbeddedCluster, KedaPoller, SimClock
from smoelib.harness.evaluate import RunSpec, run_episode
from smoelib.policy.agent import SMoEAgent
from smoelib.policy.base import register
from smoelib.policy.baselines.common import with_overrides
from smoelib.policy.config import PolicyConfig
from smoelib.policy.rollout import EnvRun, collect
from smoelib.scaler.server import create_server
from smoelib.scaler.store import DecisionStore
from smoelib.settings import Settings
from smoelib.sim.env import SimEnv
from smoelib.sim.loop import SimLoop
from smoelib.topology import build_dag
from smoelib.vertical.factory import vertical_loop

pytestmark = pytest.mark.heavy  # minutes of simulated traffic: the lowest-bounds run skips it

PIPELINE = "examples/pipelines/bert-moe.yml"
TRACE, SEED, DURATION = "bursty", 11, 120.0
DAG = build_dag(PIPELINE)
SETTINGS = with_overrides(Settings(), {"simulator.warm_start": False})
"""The controller starts from whatever the cluster runs: every driver starts from the defaults."""


@register("test-scripted")
class ScriptedDecider:
    """Deterministic proposals that exercise every production rule (module docstring)."""

    def __init__(self, *, dag, settings=None):
        self.dag = dag
        self.n = 0

    def reset(self, seed: int) -> None:
        self.n = 0

    def decide(self, observation) -> PipelineDecision:
        i, self.n = self.n, self.n + 1
        experts = {}
        for j, node in enumerate(self.dag.experts):
            s = self.dag.spec(node)
            replicas = (0, 9, 1, 12)[(i + j) % 4]  # jumps both ways (step limits)
            if j % 7 == 1:
                replicas = 0  # whether busy or not (the busy floor)
            share = 0.1 if j % 3 == 0 else (0.5 if (i // 2) % 2 else 0.25)  # persist / flap
            concurrency = 8 if i >= 2 and j % 5 == 0 else s.concurrency
            experts[node] = ExpertDecision(replicas=replicas, cpu=(0.5, 1.0)[i % 2],
                                           memory_mb=s.memory_mb, gpu_share=share,
                                           concurrency=concurrency)
        return PipelineDecision(self.dag.name, float(observation.time_s),
                                MappingProxyType(experts))


def _experts(decisions):
    return [None if d is None else dict(d.experts) for d in decisions]


def _ticks() -> int:
    return math.ceil(DURATION / SETTINGS.control.interval_s)


def evaluation_driver():
    ep = run_episode(RunSpec(PIPELINE, TRACE, "test-scripted", SEED, DURATION,
                             overrides=(("simulator.warm_start", False),)))
    assert ep.profile == "production"
    return _experts(ep.loop.decisions), ep.loop.env


def simulate_driver():
    loop = simulate(DAG, SETTINGS, decider=ScriptedDecider(dag=DAG), profile="production",
                    trace=TRACE, duration_s=DURATION, seed=SEED)
    return _experts(loop.decisions), loop.env


def training_driver():
    agent = SMoEAgent(PolicyConfig.from_settings(SETTINGS))
    ro = collect(agent, dag=DAG, runs=[EnvRun(SETTINGS, TRACE, SEED)] * 2, duration_s=DURATION,
                 mode="teacher", teacher="test-scripted",
                 generator=torch.Generator().manual_seed(0))
    assert _experts(ro.applied[0]) == _experts(ro.applied[1])
    assert ro.lifts.shape == ro.cost.shape  # the shield's lifts, per tick and environment
    assert ((ro.lifts >= 0) & (ro.lifts <= 1)).all()
    return _experts(ro.applied[0]), None


def controller_driver():
    env = SimEnv(DAG, SETTINGS, trace=TRACE, duration_s=DURATION)
    first = env.reset(SEED)
    box = []
    store = DecisionStore(staleness_s=SETTINGS.scaler.staleness_s, clock=lambda: box[0].now())
    store.add_pipeline(DAG)
    server, port = create_server("127.0.0.1:0", store=store, registry=CollectorRegistry())
    poller = KedaPoller(f"127.0.0.1:{port}", DAG, SETTINGS)
    try:
        cluster = EmbeddedCluster(env, poller, first)
        clock = SimClock(cluster)
        box.append(clock)
        decider = ScriptedDecider(dag=DAG)
        controller = SMoEController(DAG, SETTINGS, warmup_seconds=0, clock=clock,
                                    source=cluster, decider=decider, store=store,
                                    vertical=vertical_loop(DAG, SETTINGS, kind="simulated",
                                                           sim_target=cluster.functions))
        assert controller.profile.name == "production"
        reports = controller.run(interval=env.dt, max_steps=_ticks(), verbose=False)
        clock.sleep(env.dt)  # the simulated tick after the last decision, as the others run it
    finally:
        poller.close()
        server.stop(grace_s=0)
    assert all(r.status == "ok" for r in reports)
    return _experts([r.decision for r in reports]), env


@pytest.fixture(scope="module")
def reference():
    return evaluation_driver()


@pytest.mark.parametrize("driver", [simulate_driver, training_driver, controller_driver],
                         ids=["simulate", "training", "controller"])
def test_every_driver_applies_the_same_decisions_tick_for_tick(reference, driver):
    want, env = reference
    got, other = driver()
    assert len(want) == _ticks()
    assert got == want
    if other is not None:  # the same decisions reached the same cluster
        assert other.cluster.replaced == env.cluster.replaced
        assert other.cost == pytest.approx(env.cost, rel=1e-12)


def test_the_script_trips_every_production_rule(reference):
    fired = set()
    again = SimLoop(SimEnv(DAG, SETTINGS, trace=TRACE, duration_s=DURATION), settings=SETTINGS,
                    profile="production")
    again.reset(SEED)
    again.run(ScriptedDecider(dag=DAG), on_step=lambda s: fired.update(s.tick.fired))
    assert {"step", "busy", "hysteresis", "budget"} <= fired
    assert _experts(again.decisions) == reference[0]
