"""``smoe serve`` and ``smoe plan`` against the decision files an adversarial operator writes:
bytes that are not UTF-8, a decision dated in the future, replica counts beyond the pipeline's
maximum, a FIFO in place of the file, a file deleted while serving. Real processes, real
sockets: one clear line each, the last good decision kept, UNAVAILABLE at start, no traceback,
no hang, SIGTERM still honoured."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import grpc
import pytest

from smoelib.keda_proto import externalscaler_pb2 as pb
from smoelib.keda_proto.externalscaler_pb2_grpc import ExternalScalerStub
from tests.integration.scaler_fixtures import serve_process

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]
BERT = ROOT / "examples" / "pipelines" / "bert-moe.yml"
EXPERT = "moe1/e0"


def decision(replicas: float = 2, *, at: float | None = None) -> dict:
    from smoelib.topology import build_dag

    dag = build_dag(BERT)
    return {"pipeline": "bert-moe", "updated_at": time.time() if at is None else at,
            "experts": {n: {"replicas": replicas if n == EXPERT else 1, "cpu": 1.0,
                            "memory_mb": 2048, "gpu_share": 0.25, "concurrency": 4}
                        for n in dag.experts}}


def ask(port: int) -> tuple[grpc.StatusCode, str, float | None]:
    ref = pb.ScaledObjectRef(name="so", namespace="openfaas-fn",
                             scalerMetadata={"pipeline": "bert-moe", "expert": EXPERT})
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = ExternalScalerStub(channel)
        try:
            value = stub.GetMetrics(pb.GetMetricsRequest(
                scaledObjectRef=ref, metricName="bert-moe-moe1-e0"), timeout=5).metricValues[0]
        except grpc.RpcError as e:
            return e.code(), e.details(), None
    return grpc.StatusCode.OK, "", value.metricValueFloat


def wait_for(port: int, code: grpc.StatusCode, *, timeout_s: float = 10.0):
    deadline = time.monotonic() + timeout_s
    while True:
        got = ask(port)
        if got[0] == code or time.monotonic() > deadline:
            return got
        time.sleep(0.2)


@pytest.mark.parametrize("content, needle", [
    (b'{"pipeline": "bert-moe", "updated_at": 1, "experts": {"\xff\xfe": {}}}',
     "not UTF-8 text"),
    (json.dumps(decision(at=time.time() + 3600)).encode(), "s in the future"),
    (json.dumps(decision(1e9)).encode(), "1000000000 is outside the pipeline's bounds [0, 8]"),
    (json.dumps(decision(1e19)).encode(), "is outside the pipeline's bounds [0, 8]"),
], ids=["not-utf8", "future", "1e9-replicas", "1e19-replicas"])
def test_a_bad_file_at_start_is_served_unavailable_and_while_serving_keeps_the_last_good(
        tmp_path, content, needle):
    path = tmp_path / "bert-moe.json"
    path.write_bytes(content)
    with serve_process(["--scaler-only", "--pipeline", str(BERT), "--decisions", str(path)],
                       cwd=ROOT, startup_s=30) as serving:
        code, details, _ = ask(serving.grpc_port)
        assert code == grpc.StatusCode.UNAVAILABLE and needle in details
        path.write_text(json.dumps(decision(3)))
        assert wait_for(serving.grpc_port, grpc.StatusCode.OK)[2] == 3.0
        path.write_bytes(content)  # corrupted again while serving
        time.sleep(2.5)  # two reload periods
        assert ask(serving.grpc_port) == (grpc.StatusCode.OK, "", 3.0)
    rejected = [line for line in serving.stderr if needle in line]
    assert len(rejected) == 2, serving.stderr  # once at start, once while serving


def test_a_fifo_in_place_of_the_file_blocks_nothing_and_sigterm_still_stops(tmp_path):
    path = tmp_path / "bert-moe.json"
    os.mkfifo(path)
    with serve_process(["--scaler-only", "--pipeline", str(BERT), "--decisions", str(path)],
                       cwd=ROOT, startup_s=30) as serving:
        code, details, _ = ask(serving.grpc_port)
        assert code == grpc.StatusCode.UNAVAILABLE and "not a regular decision file" in details
    assert any("not a regular decision file" in line for line in serving.stderr)


def test_deleting_the_file_while_serving_is_one_line(tmp_path):
    path = tmp_path / "bert-moe.json"
    path.write_text(json.dumps(decision(2)))
    with serve_process(["--scaler-only", "--pipeline", str(BERT), "--decisions", str(path)],
                       cwd=ROOT, startup_s=30) as serving:
        assert ask(serving.grpc_port)[2] == 2.0
        path.unlink()
        time.sleep(2.5)
        assert ask(serving.grpc_port)[2] == 2.0  # the last good decision, ageing
    deleted = [line for line in serving.stderr if "was deleted" in line]
    assert len(deleted) == 1 and "keeps its last good decision" in deleted[0]


def test_smoe_plan_on_a_file_that_is_not_utf8_is_one_line_and_exit_2(tmp_path):
    path = tmp_path / "bad.json"
    path.write_bytes(b"\xff\xfe\x00garbage")
    proc = subprocess.run([sys.executable, "-m", "smoelib.cli", "plan", "--pipeline", str(BERT),
                           "--decisions", str(path), "--gateway", "http://127.0.0.1:9",
                           "--stack", str(path)], capture_output=True, text=True, cwd=ROOT,
                          timeout=60)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [f"error: {path}: not UTF-8 text (byte 0)"]
