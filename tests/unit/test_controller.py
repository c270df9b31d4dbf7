"""The controller on the embedded cluster: one tick at a time, in simulated time."""

from __future__ import annotations

import math
from pathlib import Path
from types import MappingProxyType

import pytest
from prometheus_client import CollectorRegistry

from smoelib.controller import SMoEController
from smoelib.core.decisions import ExpertDecision, PipelineDecision
from smoelib.errors import TransientError
from smoelib.harness.embedded import EmbeddedCluster, KedaPoller, SimClock
from smoelib.policy.base import get_decider
from smoelib.scaler.server import create_server
from smoelib.scaler.status import NoDecision, StaleDecision
from smoelib.scaler.store import DecisionStore
from smoelib.settings import load_settings
from smoelib.sim.env import SimEnv
from smoelib.topology import build_dag

ROOT = Path(__file__).resolve().parents[2]
DAG = build_dag({"name": "tiny", "slo_ms": 60, "stages": [
    {"id": "attn"}, {"id": "moe1", "experts": 3, "top_k": 1}, {"id": "head"}]})
SETTINGS = load_settings({"scaler": {"staleness_s": 30}, "control": {"interval_s": 5}})


class FlakySource:
    """A metric source that fails while ``down`` is set (wraps the embedded cluster)."""

    def __init__(self, inner):
        self.inner = inner
        self.down = False
        self.calls = 0

    def fetch(self, now):
        self.calls += 1
        if self.down:
            raise TransientError("Prometheus unreachable for query 'calls_per_s'")
        return self.inner.fetch(now)


class Proposals:
    """A decider whose next proposal the test sets (``None``: the static decision)."""

    def __init__(self):
        self.static = get_decider("static", dag=DAG, settings=SETTINGS)
        self.next = None

    def reset(self, seed):
        pass

    def decide(self, observation):
        return self.next or self.static.decide(observation)


@pytest.fixture
def rig():
    env = SimEnv(DAG, SETTINGS, trace="poisson", duration_s=600)
    first = env.reset(7)
    box = []
    store = DecisionStore(staleness_s=SETTINGS.scaler.staleness_s, clock=lambda: box[0].now())
    store.add_pipeline(DAG)
    server, port = create_server("127.0.0.1:0", store=store, registry=CollectorRegistry())
    poller = KedaPoller(f"127.0.0.1:{port}", DAG, SETTINGS)
    cluster = EmbeddedCluster(env, poller, first)
    clock = SimClock(cluster)
    box.append(clock)
    source = FlakySource(cluster)
    decider = Proposals()
    from smoelib.vertical.factory import vertical_loop

    controller = SMoEController(DAG, SETTINGS, dry_run=False, warmup_seconds=0, clock=clock,
                                source=source, decider=decider, store=store,
                                vertical=vertical_loop(DAG, SETTINGS, kind="simulated",
                                                       sim_target=cluster.functions))
    yield controller, cluster, store, source, decider, poller
    poller.close()
    server.stop(grace_s=0)


def test_a_tick_writes_replicas_to_the_store_and_keda_reads_them(rig):
    controller, cluster, store, *_ = rig
    report = controller.step()
    assert report.status == "ok"
    assert store.lookup("tiny", "moe1/e0").replicas == 1
    controller.clock.sleep(5)
    assert cluster.replicas == {"moe1/e0": 1, "moe1/e1": 1, "moe1/e2": 1}


def test_run_counts_steps_on_the_injected_clock(rig):
    controller, cluster, *_ = rig
    reports = controller.run(interval=5, max_steps=4, verbose=False)
    assert [r.status for r in reports] == ["ok"] * 4
    assert cluster.time_s == 15.0  # slept between ticks, not after the last


def test_a_failing_source_keeps_the_last_decision_and_its_age_grows(rig):
    controller, cluster, store, source, *_ = rig
    controller.step()
    stamped = store.lookup("tiny", "moe1/e0")
    source.down = True
    statuses = []
    for _ in range(8):
        controller.clock.sleep(5)
        statuses.append(controller.step().status)
    assert statuses[0] == "source-error" and "backoff" in statuses
    assert controller.failures >= 2
    assert source.calls < 1 + 8  # backed off: not every tick fetched
    assert store.decision_age_s("tiny") == pytest.approx(40.0)
    with pytest.raises(StaleDecision):  # older than the staleness: KEDA's fallback acts
        store.lookup("tiny", "moe1/e0")
    assert stamped.replicas == 1
    source.down = False
    for _ in range(5):  # recovers within the longest backoff once the source is back
        controller.clock.sleep(5)
        if controller.step().status == "ok":
            break
    assert store.decision_age_s("tiny") == pytest.approx(0.0)
    assert controller.failures == 0


@pytest.mark.parametrize("bad", [math.nan, math.inf])
def test_a_nan_proposal_is_refused_and_never_applied(rig, bad):
    controller, cluster, store, _, decider, _ = rig
    controller.step()
    experts = dict(controller.last.experts)
    experts["moe1/e1"] = ExpertDecision(replicas=3, cpu=bad, memory_mb=2048, gpu_share=0.25,
                                        concurrency=4)
    decider.next = PipelineDecision("tiny", 0.0, MappingProxyType(experts))
    controller.clock.sleep(5)
    report = controller.step()
    assert report.status == "refused"
    assert store.lookup("tiny", "moe1/e1").replicas == 1


def test_a_busy_expert_proposed_at_zero_keeps_one_replica(rig):
    controller, cluster, store, _, decider, _ = rig
    for _ in range(3):  # traffic reaches every expert (top-1 of 3, poisson)
        controller.step()
        controller.clock.sleep(5)
    assert "moe1/e1" in controller.observation.nodes
    experts = dict(controller.last.experts)
    experts["moe1/e1"] = ExpertDecision(replicas=0, cpu=0.5, memory_mb=1024, gpu_share=0.1,
                                        concurrency=4)
    decider.next = PipelineDecision("tiny", 0.0, MappingProxyType(experts))
    report = controller.step()
    assert report.status == "ok"
    assert any("kept one replica of 1 busy experts" in n for n in report.notes)
    assert store.lookup("tiny", "moe1/e1").replicas == 1


def test_dry_run_applies_nothing(rig):
    controller, cluster, store, *_ = rig
    controller.dry_run = True
    assert controller.step().status == "ok"
    with pytest.raises(NoDecision):
        store.lookup("tiny", "moe1/e0")  # nothing written: no decision yet


def test_warmup_waits_before_the_first_action(rig):
    controller, *_ = rig
    controller.warmup_s = 12
    assert controller.step().status == "warmup"
    controller.clock.sleep(15)
    assert controller.step().status == "ok"


def test_vertical_changes_reach_the_cluster_after_hysteresis(rig):
    controller, cluster, store, _, decider, _ = rig
    controller.step()
    experts = dict(controller.last.experts)
    experts["moe1/e2"] = ExpertDecision(replicas=2, cpu=2.0, memory_mb=2048, gpu_share=0.5,
                                        concurrency=8)
    decider.next = PipelineDecision("tiny", 0.0, MappingProxyType(experts))
    for _ in range(SETTINGS.guards.hysteresis_ticks + 1):
        controller.clock.sleep(5)
        controller.step()
    knobs = cluster.knobs["moe1/e2"]
    assert (knobs["gpu_share"], knobs["concurrency"], knobs["cpu"]) == (0.5, 8, 2.0)
    assert cluster.knobs["moe1/e0"]["gpu_share"] == DAG.spec("moe1/e0").gpu_share
