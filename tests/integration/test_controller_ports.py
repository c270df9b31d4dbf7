"""The controller cannot die quietly: an exception from any port (metrics, decider, store,
vertical) is one log line, a count on ``/metrics``, and the last good decision stays; inside
``smoe serve`` liveness fails only when the loop thread is dead or wedged, never because a
dependency fails.

Real pieces where the issue names them: a real HTTP server answering nonsense in place of
Prometheus (behind the real ``PrometheusSource``), a decision directory that disappears, a
vertical target that raises, a real gRPC health check and a real ``/metrics`` scrape.
"""

from __future__ import annotations

import logging
import re
import shutil
import socket
import threading
import time
import urllib.request
from types import MappingProxyType

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client import CollectorRegistry

from smoelib.commands import serve
from smoelib.control.controller import SMoEController
from smoelib.control.metrics import PrometheusSource
from smoelib.core.decisions import ExpertDecision
from smoelib.harness.embedded import EmbeddedCluster, KedaPoller, SimClock
from smoelib.policy.base import get_decider
from smoelib.scaler.server import create_server
from smoelib.scaler.store import DecisionStore
from smoelib.settings import load_settings
from smoelib.sim.env import SimEnv
from smoelib.topology import build_dag
from smoelib.vertical.factory import vertical_loop
from tests.integration.http_fixtures import JsonHandler, serving
from tests.integration.scaler_fixtures import SteppedClock

pytestmark = pytest.mark.integration
DAG = build_dag({"name": "tiny", "slo_ms": 60, "stages": [
    {"id": "attn"}, {"id": "moe1", "experts": 3, "top_k": 1}, {"id": "head"}]})
SETTINGS = load_settings({"scaler": {"staleness_s": 30}, "control": {"interval_s": 5}})


class Nonsense(JsonHandler):
    """Prometheus' address, answering HTTP 200 with an error body and no ``data``."""

    def do_GET(self):  # noqa: N802 - the stdlib's name
        self.answer(200, {"status": "error", "errorType": "internal", "error": "?"})


@pytest.fixture
def nonsense_prometheus():
    with serving(Nonsense) as server:
        yield f"http://127.0.0.1:{server.server_address[1]}"


class Switch:
    """The embedded cluster's observations until ``to`` is set, then ``to``'s."""

    def __init__(self, first):
        self.first, self.to = first, None

    def fetch(self, now):
        return (self.to or self.first).fetch(now)


class Scripted:
    """The static decision; raises ``error`` while it is set."""

    def __init__(self):
        self.static = get_decider("static", dag=DAG, settings=SETTINGS)
        self.error: BaseException | None = None

    def reset(self, seed):
        pass

    def decide(self, observation):
        if self.error is not None:
            raise self.error
        return self.static.decide(observation)


class BrokenFunctions:
    """A vertical target (the simulated backend's port) that raises on every write."""

    def __init__(self, cluster):
        self.cluster = cluster

    def vertical_state(self, function):
        return self.cluster.functions.vertical_state(function)

    def apply_vertical(self, function, changes, *, in_place):
        raise RuntimeError("the function's API fell over")


@pytest.fixture
def rig(tmp_path):
    env = SimEnv(DAG, SETTINGS, trace="poisson", duration_s=600)
    first = env.reset(7)
    box = []
    store = DecisionStore(staleness_s=SETTINGS.scaler.staleness_s, clock=lambda: box[0].now())
    (tmp_path / "decisions").mkdir()
    store.add_pipeline(DAG, decision_path=tmp_path / "decisions" / "tiny.json")
    server, port = create_server("127.0.0.1:0", store=store, registry=CollectorRegistry())
    poller = KedaPoller(f"127.0.0.1:{port}", DAG, SETTINGS)
    cluster = EmbeddedCluster(env, poller, first)
    clock = SimClock(cluster)
    box.append(clock)
    source, decider = Switch(cluster), Scripted()
    controller = SMoEController(DAG, SETTINGS, warmup_seconds=0, clock=clock, source=source,
                                decider=decider, store=store,
                                vertical=vertical_loop(DAG, SETTINGS, kind="simulated",
                                                       sim_target=cluster.functions))
    yield controller, store, source, decider, cluster, tmp_path
    poller.close()
    server.stop(grace_s=0)


def test_nonsense_from_prometheus_is_one_line_and_the_last_decision_stays(
        rig, nonsense_prometheus, caplog):
    controller, store, source, *_ = rig
    assert controller.step().status == "ok"
    good = store.lookup("tiny", "moe1/e0")
    source.to = PrometheusSource(DAG, url=nonsense_prometheus, timeout_s=2)
    caplog.clear()
    controller.clock.sleep(5)
    report = controller.step()
    assert report.status == "source-error" and report.decision is controller.last
    lines = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(lines) == 1 and lines[0].startswith("metrics: ")
    assert store.lookup("tiny", "moe1/e0") == good
    reports = controller.run(interval=5, max_steps=6, verbose=False)  # the loop goes on
    assert len(reports) == 6 and {r.status for r in reports} <= {"source-error", "backoff"}
    assert controller.telemetry.port_failures.labels("tiny", "metrics")._value.get() >= 2


def test_a_raising_decider_is_one_line_and_the_last_decision_stays(rig, caplog):
    controller, store, _, decider, *_ = rig
    controller.step()
    last = controller.last
    decider.error = ZeroDivisionError("division by zero")
    caplog.clear()
    controller.clock.sleep(5)
    report = controller.step()
    assert report.status == "decider-error" and "ZeroDivisionError" in report.error
    lines = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(lines) == 1 and lines[0].startswith("decider Scripted failed")
    assert controller.last is last
    decider.error = None
    controller.clock.sleep(5)
    assert controller.step().status == "ok"


def test_an_unwritable_decision_directory_costs_neither_the_loop_nor_the_vertical_part(
        rig, caplog):
    controller, store, _, decider, cluster, tmp_path = rig
    controller.step()
    served = store.lookup("tiny", "moe1/e0")
    shutil.rmtree(tmp_path / "decisions")  # the volume went away
    experts = dict(controller.last.experts)
    experts["moe1/e1"] = ExpertDecision(replicas=2, cpu=2.0, memory_mb=2048, gpu_share=0.25,
                                        concurrency=4)
    decider.static.experts = MappingProxyType(experts)
    caplog.clear()
    controller.clock.sleep(5)
    report = controller.step()
    assert report.status == "actuator-error" and report.error.startswith("store: ")
    lines = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(lines) == 1 and lines[0].startswith("store: FileNotFoundError")
    assert store.lookup("tiny", "moe1/e0") == served  # the scaler keeps the stored decision
    assert cluster.knobs["moe1/e1"]["cpu"] == 2.0  # the vertical part was applied anyway
    assert store.decision_age_s("tiny") == pytest.approx(5.0)  # and its age grows


def test_a_raising_vertical_backend_is_one_line_and_replicas_still_reach_the_store(
        tmp_path, caplog):
    env = SimEnv(DAG, SETTINGS, trace="poisson", duration_s=600)
    first = env.reset(7)
    store = DecisionStore(staleness_s=30, clock=lambda: 0.0)
    store.add_pipeline(DAG)
    cluster = EmbeddedCluster(env, poller=None, first=first)
    decider = Scripted()
    experts = {n: ExpertDecision(2, 2.0, 2048, 0.25, 4) for n in DAG.experts}
    decider.static.experts = MappingProxyType(experts)
    controller = SMoEController(DAG, SETTINGS, warmup_seconds=0, source=cluster,
                                decider=decider, store=store, clock=SteppedClock(0.0),
                                vertical=vertical_loop(DAG, SETTINGS, kind="simulated",
                                                       sim_target=BrokenFunctions(cluster)))
    report = controller.step()
    assert report.status == "actuator-error"
    lines = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(lines) == 1 and lines[0].startswith("vertical: RuntimeError: the function's API")
    assert store.lookup("tiny", "moe1/e0").replicas == 2  # the store was written first
    assert controller.step().status == "actuator-error"  # and the loop goes on


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Observing:
    """A metric source for a real-time loop: the simulator's first observation, every time;
    or a source that is down."""

    def __init__(self, *, down=False):
        env = SimEnv(DAG, SETTINGS, trace="poisson", duration_s=60)
        self.observation = env.reset(1)
        self.down = down

    def fetch(self, now):
        if self.down:
            raise ConnectionRefusedError("Prometheus is down")
        return self.observation


def _liveness(port: int) -> int:
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        return stub.Check(health_pb2.HealthCheckRequest(service="liveness"), timeout=5,
                          wait_for_ready=True).status


def _serving(controller, *, until, timeout_s=20.0):
    """Run ``smoe serve`` with ``controller`` until ``until(grpc_port, metrics_port)`` holds."""
    plan = serve.ServePlan(((DAG, None),), host="127.0.0.1", grpc_port=_free_port(),
                           metrics_port=_free_port(), staleness_s=30.0, tls=None)
    stop = threading.Event()
    thread = threading.Thread(target=serve.serve, args=(plan,),
                              kwargs={"stop": stop, "components": [controller]})
    thread.start()
    try:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                if until(plan.grpc_port, plan.metrics_port):
                    return plan
            except OSError:  # not listening yet
                pass
            time.sleep(0.2)
        raise AssertionError("condition not reached")
    finally:
        stop.set()
        thread.join(timeout=30)


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
def test_liveness_fails_when_the_loop_thread_dies(caplog):
    decider = Scripted()
    decider.error = SystemExit(3)  # not an Exception: it ends the loop thread
    controller = SMoEController(DAG, load_settings({"control": {"interval_s": 0.2}}),
                                warmup_seconds=0, source=Observing(), decider=decider,
                                vertical=False)
    _serving(controller, until=lambda g, _m: _liveness(g) == health_pb2.
             HealthCheckResponse.NOT_SERVING and not controller.alive())
    assert "controller loop of tiny ended: SystemExit" in caplog.text
    assert "liveness NOT_SERVING: SMoEController stopped ticking" in caplog.text


def test_a_failing_dependency_never_changes_liveness_and_shows_on_metrics():
    controller = SMoEController(DAG, load_settings({"control": {"interval_s": 0.2}}),
                                warmup_seconds=0, source=Observing(down=True),
                                decider=Scripted(), vertical=False)

    def failing_but_live(grpc_port, metrics_port):
        with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5) as r:
            text = r.read().decode()
        found = re.search(r'smoe_controller_port_failures_total\{pipeline="tiny",port="metrics"\} '
                          r'([0-9.]+)', text)
        failed = found is not None and float(found.group(1)) >= 3
        return (failed and controller.alive()
                and _liveness(grpc_port) == health_pb2.HealthCheckResponse.SERVING)

    _serving(controller, until=failing_but_live)


def test_a_wedged_loop_is_not_alive():
    clock = SteppedClock()
    controller = SMoEController(DAG, SETTINGS, warmup_seconds=0, source=Observing(),
                                decider=Scripted(), vertical=False, clock=clock)
    controller.step()
    clock.sleep(59.0)
    assert controller.alive()  # max(3 x 5 s, 60 s) not yet passed
    clock.sleep(2.0)
    assert not controller.alive()
