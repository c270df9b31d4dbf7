"""``smoe serve`` end to end: a real process on bert-moe, every expert queried, SIGTERM; and
bad input answered with one line on stderr and exit status 2."""

from __future__ import annotations

import argparse
import json
import threading
import time
import urllib.request
from pathlib import Path

import grpc
import pytest

from smoelib.commands import serve
from smoelib.core.decisions import load_decision
from smoelib.keda_proto import externalscaler_pb2 as pb
from smoelib.keda_proto.externalscaler_pb2_grpc import ExternalScalerStub
from smoelib.topology import build_dag
from tests.integration.scaler_fixtures import make_pki, serve_process

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]
BERT = ROOT / "examples" / "pipelines" / "bert-moe.yml"
STARTUP_S = 30.0


def write_bert_decision(path: Path) -> dict[str, int]:
    dag = build_dag(BERT)
    replicas = {node: i % 4 for i, node in enumerate(dag.experts)}
    # The serving process runs on the real clock, so the decision is stamped now.
    path.write_text(json.dumps({"pipeline": "bert-moe", "updated_at": time.time(), "experts": {
        n: {"replicas": r, "cpu": 1.0, "memory_mb": 2048, "gpu_share": 0.25, "concurrency": 4}
        for n, r in replicas.items()}}))
    return replicas


def test_smoe_serve_on_bert_moe_then_sigterm(tmp_path):
    decisions = tmp_path / "bert-moe.json"
    replicas = write_bert_decision(decisions)
    before = decisions.read_bytes()
    with serve_process(["--scaler-only", "--pipeline", str(BERT), "--decisions",
                        str(decisions)], cwd=ROOT, startup_s=STARTUP_S) as serving:
        with grpc.insecure_channel(f"127.0.0.1:{serving.grpc_port}") as channel:
            stub = ExternalScalerStub(channel)
            for node, want in replicas.items():
                r = pb.ScaledObjectRef(name=f"so-{node.replace('/', '-')}", namespace="openfaas-fn",
                                       scalerMetadata={"pipeline": "bert-moe", "expert": node})
                name = stub.GetMetricSpec(r, timeout=5).metricSpecs[0].metricName
                assert name == f"bert-moe-{node.replace('/', '-')}"
                value = stub.GetMetrics(pb.GetMetricsRequest(scaledObjectRef=r, metricName=name),
                                        timeout=5).metricValues[0]
                assert (value.metricValue, value.metricValueFloat) == (want, float(want))
                assert stub.IsActive(r, timeout=5).result is (want > 0)
        metrics = f"http://127.0.0.1:{serving.metrics_port}/metrics"
        with urllib.request.urlopen(metrics, timeout=5) as rsp:
            text = rsp.read().decode()
        assert 'smoe_scaler_rpcs_total{code="OK",method="GetMetrics"} 72.0' in text
        assert 'smoe_scaler_decision_age_seconds{pipeline="bert-moe"}' in text
    assert decisions.read_bytes() == before
    assert len(load_decision(decisions).experts) == 72


def run_serve(argv: list[str], capsys, *, scaler_only: bool = True) -> tuple[int, list[str]]:
    parser = argparse.ArgumentParser()
    serve.add_arguments(parser)
    code = serve.run(parser.parse_args(["--scaler-only", *argv] if scaler_only else argv))
    return code, capsys.readouterr().err.strip().splitlines()


def test_missing_pipeline_file(capsys, tmp_path):
    code, err = run_serve(["--pipeline", str(tmp_path / "nope.yml")], capsys)
    assert code == 2 and err == [f"error: {tmp_path / 'nope.yml'}: no such file"]


def test_a_bad_decision_file_is_logged_and_served_unavailable(caplog, tmp_path):
    """A corrupt file at start is never served, and the scaler does not crash-loop: the
    pipeline answers UNAVAILABLE (KEDA's fallback acts) until a good decision arrives."""
    bad = tmp_path / "bert-moe.json"
    bad.write_text(json.dumps({"pipeline": "bert-moe", "updated_at": 1, "experts": {
        "moe1/e0": {"replicas": -3, "cpu": 1, "memory_mb": 1, "gpu_share": 0,
                    "concurrency": 1}}}))
    parser = argparse.ArgumentParser()
    serve.add_arguments(parser)
    plan = serve.plan_from_args(parser.parse_args([
        "--scaler-only", "--pipeline", str(BERT), "--decisions", str(bad), "--host",
        "127.0.0.1", "--grpc-port", "0", "--metrics-port", "0"]))
    plan = serve.ServePlan(plan.pipelines, host=plan.host, grpc_port=_free_port(),
                           metrics_port=0, staleness_s=plan.staleness_s, tls=None)
    stop = threading.Event()
    result: list[int] = []
    thread = threading.Thread(target=lambda: result.append(serve.serve(plan, stop=stop)))
    thread.start()
    try:
        ref = pb.ScaledObjectRef(name="x", namespace="openfaas-fn",
                                 scalerMetadata={"pipeline": "bert-moe", "expert": "moe1/e0"})
        with grpc.insecure_channel(f"127.0.0.1:{plan.grpc_port}") as channel:
            stub = ExternalScalerStub(channel)
            request = pb.GetMetricsRequest(scaledObjectRef=ref, metricName="bert-moe-moe1-e0")
            with pytest.raises(grpc.RpcError) as info:
                stub.GetMetrics(request, timeout=5, wait_for_ready=True)
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE
        assert "experts.moe1/e0.replicas: must be >= 0" in info.value.details()
    finally:
        stop.set()
        thread.join(timeout=30)
    assert result == [0]
    assert f"{bad}: experts.moe1/e0.replicas: must be >= 0; pipeline bert-moe answers " \
           "UNAVAILABLE until a good decision arrives" in caplog.text


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.parametrize("argv,needle", [
    (["--grpc-port", "70000"], "error: smoe serve: --grpc-port: must be a port number"),
    (["--metrics-port", "-1"], "error: smoe serve: --metrics-port: must be a port number"),
    (["--tls-cert", "x.pem"], "error: smoe serve: --tls-cert: TLS needs both"),
    (["--decisions", "a.json", "--decisions", "b.json"], "error: smoe serve: --decisions: given 2"),
    (["--decisions", "no/such/dir/x.json"], "--decisions: directory no/such/dir does not exist"),
])
def test_bad_arguments(capsys, argv, needle):
    code, err = run_serve(["--pipeline", str(BERT), *argv], capsys)
    assert code == 2 and len(err) == 1 and needle in err[0], err


def test_bad_certificate(capsys, tmp_path):
    pki = make_pki(tmp_path)
    code, err = run_serve(["--pipeline", str(BERT), "--tls-cert", str(pki.server_cert),
                           "--tls-key", str(pki.client_key)], capsys)
    assert code == 2 and len(err) == 1
    assert err[0].startswith(f"error: {pki.client_key}: --tls-key: does not match")


def test_the_controller_needs_a_reachable_cluster_unless_dry_run(capsys, tmp_path,
                                                                   monkeypatch):
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "none"))
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    code, err = run_serve(["--pipeline", str(BERT), "--grpc-port", "0", "--metrics-port", "0"],
                          capsys, scaler_only=False)
    assert code == 2 and len(err) == 1
    assert err[0].startswith("error: kubeconfig: --kubeconfig: cannot load")


def test_busy_port(capsys):
    with socket_bound() as port:
        code, err = run_serve(["--pipeline", str(BERT), "--host", "127.0.0.1",
                               "--grpc-port", str(port), "--metrics-port", "0"], capsys)
    assert code == 2 and len(err) == 1 and "--grpc-port: cannot listen on" in err[0]


class socket_bound:
    """A listening TCP socket on a free loopback port, as another process would hold it."""

    def __enter__(self) -> int:
        import socket

        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen()
        return self.sock.getsockname()[1]

    def __exit__(self, *exc) -> None:
        self.sock.close()
