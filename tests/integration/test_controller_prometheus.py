"""The controller against a real Prometheus scraping the simulator's exporter."""

from __future__ import annotations

import math
import socket
import threading
from pathlib import Path

import grpc
import pytest
import yaml

from smoelib.control.metrics import PrometheusSource
from smoelib.controller import SMoEController
from smoelib.core.decisions import load_decision
from smoelib.errors import TransientError
from smoelib.keda_proto import externalscaler_pb2 as pb
from smoelib.keda_proto.externalscaler_pb2_grpc import ExternalScalerStub
from smoelib.settings import load_settings
from smoelib.topology import build_dag
from tests.integration.prometheus_fixtures import PacedSim, PrometheusProcess, free_port
from tests.integration.scaler_fixtures import serve_process

ROOT = Path(__file__).resolve().parents[2]
PIPELINE = ROOT / "examples" / "pipelines" / "bert-moe.yml"
CONFIG = {"metrics": {"rate_window_s": 10, "query_timeout_s": 2, "max_sample_age_s": 4},
          "policy": {"name": "static"}}


@pytest.fixture(scope="module")
def config_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("config") / "config.yaml"
    path.write_text(yaml.safe_dump(CONFIG))
    return path


@pytest.fixture(scope="module")
def live(config_file):
    dag = build_dag(config=str(PIPELINE))
    sim = PacedSim(PIPELINE, config_file)
    prom = PrometheusProcess([sim.target])
    try:
        prom.wait_for('rate(smoe_expert_calls_total{pipeline="bert-moe"}[10s]) > 0')
        yield dag, sim, prom
    finally:
        prom.close()
        sim.close()


def test_prometheus_source_reads_every_series(live):
    dag, sim, prom = live
    source = PrometheusSource(dag, url=prom.url, timeout_s=2, window_s=10)
    obs = source.fetch(0.0)
    experts = [dag.nodes.index(n) for n in dag.experts]
    assert obs.calls_per_s[experts].sum() > 0
    assert obs.tokens_per_s[experts].sum() > obs.calls_per_s[experts].sum()
    assert (obs.replicas_ready[experts] >= 1).all()
    assert obs.request_rate > 0
    assert math.isfinite(obs.p95_ms) and 0 < obs.p95_ms < 1000
    # the per-pass view: TTFT (an encoder has no TPOT series), attainment, drops
    assert math.isfinite(obs.ttft_p95_ms) and 0 < obs.ttft_p95_ms < 1000
    assert 0.0 <= obs.slo_attainment <= 1.0 and obs.dropped_per_s >= 0.0
    assert obs.cpu[experts].tolist() == [dag.spec(n).cpu for n in dag.experts]


def test_seed_snippet_runs_against_prometheus(live, tmp_path, monkeypatch, capsys):
    dag_, sim, prom = live
    monkeypatch.chdir(tmp_path)
    Path("pipeline.yml").write_text(PIPELINE.read_text())
    Path("config.yaml").write_text(yaml.safe_dump(CONFIG))
    from smoelib.controller import SMoEController
    from smoelib.pipeline.topology import build_dag as build

    # The seed API, verbatim but for prometheus_url, dry_run, warmup_seconds, interval and
    # max_steps:
    dag = build(config="pipeline.yml", validate=True, attach_metadata=True)
    controller = SMoEController(dag=dag, config="config.yaml", prometheus_url=prom.url,
                                dry_run=True, log_interval=10, warmup_seconds=0)
    controller.run(interval=1, max_steps=3, verbose=True)

    out = capsys.readouterr().out.splitlines()
    assert len(out) == 3 and all(" ok " in line for line in out), out
    assert controller.last is not None and set(controller.last.experts) == set(dag.experts)


class HangingServer:
    """Accepts connections and never answers: a Prometheus query that hangs."""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.held = []
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def _accept(self):
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.held.append(conn)

    def close(self):
        self.sock.close()
        for conn in self.held:
            conn.close()


def test_a_hanging_query_times_out_as_a_transient_error():
    dag = build_dag(config=str(PIPELINE))
    server = HangingServer()
    try:
        source = PrometheusSource(dag, url=server.url, timeout_s=0.5, window_s=10)
        with pytest.raises(TransientError, match="timed out"):
            source.fetch(0.0)
    finally:
        server.close()


def test_nan_samples_are_refused(live):
    dag, sim, prom = live
    queries = {"calls_per_s": 'sum by (expert) (smoe_expert_calls_total{pipeline="bert-moe"})'
                              ' * NaN'}
    source = PrometheusSource(dag, url=prom.url, timeout_s=2, window_s=10, queries=queries)
    with pytest.raises(TransientError, match="returned nan for 'calls_per_s'"):
        source.fetch(0.0)


def test_faults_keep_the_last_decision_and_it_recovers(config_file):
    """Prometheus stopped mid-run, then back; then the exporter disappears."""
    dag = build_dag(config=str(PIPELINE))
    settings = load_settings(CONFIG)
    sim = PacedSim(PIPELINE, config_file, seed=5)
    prom = PrometheusProcess([sim.target], port=free_port())
    try:
        prom.wait_for('rate(smoe_expert_calls_total{pipeline="bert-moe"}[10s]) > 0')
        now = [1_000.0]

        class Clock:
            def now(self):
                return now[0]

            def sleep(self, seconds):
                now[0] += seconds

        controller = SMoEController(dag, settings, prometheus_url=prom.url, dry_run=False,
                                    warmup_seconds=0, clock=Clock(), vertical=False)
        assert controller.step().status == "ok"
        assert controller.store.decision_age_s("bert-moe") == 0
        prom.stop()
        statuses = []
        for _ in range(3):
            now[0] += 5
            statuses.append(controller.step().status)
        assert statuses[0] == "source-error"
        assert controller.store.decision_age_s("bert-moe") == 15
        prom.start()
        prom.wait_for('rate(smoe_expert_calls_total{pipeline="bert-moe"}[10s]) > 0')
        for _ in range(6):
            now[0] += 5
            if controller.step().status == "ok":
                break
        assert controller.store.decision_age_s("bert-moe") == 0
        sim.vanish()  # Prometheus keeps answering from its last samples for a while
        prom.wait_for('time() - max(timestamp(smoe_expert_calls_total{pipeline="bert-moe"})) '
                      "> 5")
        now[0] += 60
        report = controller.step()
        assert report.status == "source-error"
        assert "its exporters are gone" in report.error
    finally:
        prom.close()
        sim.close()




def test_smoe_serve_runs_controller_and_scaler_in_one_process(live, tmp_path):
    """The Kubernetes Deployment's process: Prometheus -> controller -> store -> gRPC."""
    dag, sim, prom = live
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump({**CONFIG, "vertical": {"backend": "none"},
                                      "control": {"interval_s": 1, "warmup_s": 0}}))
    ref = pb.ScaledObjectRef(name="bert-moe-moe1-e0", namespace="openfaas-fn",
                             scalerMetadata={"pipeline": "bert-moe", "expert": "moe1/e0"})
    with serve_process(["--pipeline", str(PIPELINE), "--config", str(config), "--prometheus",
                        prom.url, "--decisions", str(tmp_path)], cwd=ROOT) as serving:
        with grpc.insecure_channel(f"127.0.0.1:{serving.grpc_port}") as channel:
            stub = ExternalScalerStub(channel)
            request = pb.GetMetricsRequest(scaledObjectRef=ref, metricName="bert-moe-moe1-e0")
            value = None
            for _ in range(100):  # bounded: the first tick lands within a few seconds
                try:
                    value = stub.GetMetrics(request, timeout=5).metricValues[0].metricValue
                    break
                except grpc.RpcError as e:
                    assert e.code() == grpc.StatusCode.UNAVAILABLE  # no decision yet
                    threading.Event().wait(0.2)
    saved = load_decision(tmp_path / "bert-moe.json")
    assert set(saved.experts) == set(dag.experts)
    # static's max(1, replicas_min), or one more where the production shield saw the live
    # simulator's 429s (a lift is held for minutes, so the saved decision still has it)
    assert value == saved.experts["moe1/e0"].replicas and value in (1, 2)
