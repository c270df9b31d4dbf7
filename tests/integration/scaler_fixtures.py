"""Shared pieces of the scaler tests: a settable clock, small pipelines, decisions, a running
scaler on 127.0.0.1:0, a ``smoe serve`` process, and a throwaway PKI. Nothing of ours is faked:
the clock is the injected port, the server and channel are real."""

from __future__ import annotations

import datetime
import ipaddress
import queue
import re
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from prometheus_client import CollectorRegistry

from smoelib.core.decisions import PipelineDecision, parse_decision
from smoelib.keda_proto import externalscaler_pb2 as pb
from smoelib.keda_proto import externalscaler_pb2_grpc as pb_grpc
from smoelib.pipeline.topology import PipelineDAG, build_dag
from smoelib.scaler import DecisionStore, TlsMaterial, create_server

T0 = 1_800_000_000.0  # a fixed "now", UNIX seconds
STALENESS_S = 60.0


class SettableClock:
    """The injected clock: returns ``now`` (UNIX seconds) until told otherwise."""

    def __init__(self, now: float = T0):
        self.now = now

    def __call__(self) -> float:
        return self.now


class SteppedClock:
    """A controller's clock (``now``, ``sleep``) in test time: ``sleep`` advances it at once."""

    def __init__(self, now: float = T0):
        self.t = now

    def now(self) -> float:
        return self.t

    def sleep(self, seconds: float) -> None:
        self.t += seconds


def tiny_pipeline(name: str = "tiny", experts: int = 3) -> PipelineDAG:
    """A two-stage pipeline: a segment, then one MoE layer ``moe1`` of ``experts`` experts."""
    return build_dag({"name": name, "slo_ms": 50, "stages": [
        {"id": "embed", "kind": "segment"},
        {"id": "moe1", "kind": "moe", "experts": experts, "top_k": 1}]})


def decision(pipeline: str, replicas: Mapping[str, int], *, at: float = T0) -> PipelineDecision:
    """A decision with the given replicas and fixed other knobs, made at ``at`` (UNIX s)."""
    return parse_decision({"pipeline": pipeline, "updated_at": at, "experts": {
        node: {"replicas": n, "cpu": 1.0, "memory_mb": 2048, "gpu_share": 0.25,
               "concurrency": 4} for node, n in replicas.items()}})


def ref(pipeline: str | None = "tiny", expert: str | None = "moe1/e0", **extra: str
        ) -> pb.ScaledObjectRef:
    """The ScaledObjectRef KEDA sends: all trigger metadata, including scalerAddress."""
    metadata = {"scalerAddress": "smoe-scaler.smoe:9090", **extra}
    if pipeline is not None:
        metadata["pipeline"] = pipeline
    if expert is not None:
        metadata["expert"] = expert
    return pb.ScaledObjectRef(name="so", namespace="openfaas-fn", scalerMetadata=metadata)


@dataclass
class Scaler:
    """A running scaler and a client stub on a real channel."""

    store: DecisionStore
    registry: CollectorRegistry
    port: int
    channel: grpc.Channel
    stub: pb_grpc.ExternalScalerStub


@contextmanager
def running_scaler(store: DecisionStore, *, tls: TlsMaterial | None = None,
                   channel: grpc.Channel | None = None, reflection: bool = False
                   ) -> Iterator[Scaler]:
    registry = CollectorRegistry()
    server, port = create_server("127.0.0.1:0", store=store, registry=registry, tls=tls,
                                 reflection=reflection)
    own = channel is None
    channel = channel or grpc.insecure_channel(f"127.0.0.1:{port}")
    try:
        yield Scaler(store, registry, port, channel, pb_grpc.ExternalScalerStub(channel))
    finally:
        if own:
            channel.close()
        server.stop(grace_s=1)


@dataclass(frozen=True)
class ServeProcess:
    """A running ``smoe serve``: its ports as its banner announced them."""

    proc: subprocess.Popen
    grpc_port: int
    metrics_port: int
    stderr: list[str] = field(default_factory=list)
    """the process's stderr lines, filled in once it has exited"""


@contextmanager
def serve_process(args: list[str], *, cwd: Path, startup_s: float = 60.0
                  ) -> Iterator[ServeProcess]:
    """``python -m smoelib.cli serve ARGS --host 127.0.0.1 --grpc-port 0 --metrics-port 0`` as
    a real process, up once its banner names its ports. On leaving the block normally it gets
    SIGTERM and must exit 0 with no traceback on stderr; on an error it is killed."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "smoelib.cli", "serve", *args, "--host", "127.0.0.1",
         "--grpc-port", "0", "--metrics-port", "0"],
        cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    serving = None
    lines: queue.Queue = queue.Queue()
    threading.Thread(target=lambda: [lines.put(x) for x in proc.stdout], daemon=True).start()
    try:
        banner = lines.get(timeout=startup_s)  # bounded wait for the process to come up
        match = re.search(r"scaler on 127\.0\.0\.1:(\d+), metrics on 127\.0\.0\.1:(\d+)",
                          banner)
        assert match, banner
        serving = ServeProcess(proc, int(match[1]), int(match[2]))
        yield serving
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stdout.close()
        stderr = proc.stderr.read()
        proc.stderr.close()
        if serving is not None:
            serving.stderr.extend(stderr.splitlines())
    assert "Traceback" not in stderr, stderr


@dataclass(frozen=True)
class Pki:
    """PEM files: a CA, a server cert for 127.0.0.1/localhost, a client cert from the CA, and
    a client cert from an unrelated CA."""

    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    rogue_cert: Path
    rogue_key: Path


def make_pki(directory: Path) -> Pki:
    ca_key, ca_cert = _self_signed_ca("smoe test CA")
    rogue_ca_key, rogue_ca_cert = _self_signed_ca("rogue CA")
    server_key, server_cert = _leaf(ca_key, ca_cert, "smoe-scaler", server=True)
    client_key, client_cert = _leaf(ca_key, ca_cert, "keda-operator", server=False)
    rogue_key, rogue_cert = _leaf(rogue_ca_key, rogue_ca_cert, "keda-operator", server=False)
    files = {"ca": _pem(ca_cert), "server_cert": _pem(server_cert),
             "server_key": _key_pem(server_key), "client_cert": _pem(client_cert),
             "client_key": _key_pem(client_key), "rogue_cert": _pem(rogue_cert),
             "rogue_key": _key_pem(rogue_key)}
    for name, data in files.items():
        (directory / f"{name}.pem").write_bytes(data)
    return Pki(**{name: directory / f"{name}.pem" for name in files})


def _name(common: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common)])


def _validity(builder: x509.CertificateBuilder) -> x509.CertificateBuilder:
    now = datetime.datetime.now(datetime.UTC)
    return builder.not_valid_before(now - datetime.timedelta(hours=1)).not_valid_after(
        now + datetime.timedelta(days=1))


def _self_signed_ca(common: str):
    key = ec.generate_private_key(ec.SECP256R1())
    cert = _validity(x509.CertificateBuilder().subject_name(_name(common)).issuer_name(
        _name(common)).public_key(key.public_key()).serial_number(x509.random_serial_number())
    ).add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True).sign(
        key, hashes.SHA256())
    return key, cert


def _leaf(ca_key, ca_cert, common: str, *, server: bool):
    key = ec.generate_private_key(ec.SECP256R1())
    builder = _validity(x509.CertificateBuilder().subject_name(_name(common)).issuer_name(
        ca_cert.subject).public_key(key.public_key()).serial_number(
        x509.random_serial_number())).add_extension(
        x509.BasicConstraints(ca=False, path_length=None), critical=True)
    if server:
        builder = builder.add_extension(x509.SubjectAlternativeName([
            x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False).add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
    else:
        builder = builder.add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
    return key, builder.sign(ca_key, hashes.SHA256())


def _pem(cert) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _key_pem(key) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())
