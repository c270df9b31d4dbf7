"""TLS and mTLS the way KEDA connects: ``caCert`` verifies the server (SAN 127.0.0.1 /
localhost); with a client CA configured, ``tlsClientCert``/``tlsClientKey`` are required."""

from __future__ import annotations

import grpc
import pytest

from smoelib.errors import ConfigError
from smoelib.scaler import DecisionStore, TlsMaterial
from tests.integration.scaler_fixtures import (
    STALENESS_S,
    SettableClock,
    decision,
    make_pki,
    ref,
    running_scaler,
    tiny_pipeline,
)

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture
def store():
    s = DecisionStore(staleness_s=STALENESS_S, clock=SettableClock())
    s.add_pipeline(tiny_pipeline())
    s.update(decision("tiny", {"moe1/e0": 2}))
    return s


def secure(port: int, pki, *, client: tuple | None = None, host: str = "127.0.0.1"):
    credentials = grpc.ssl_channel_credentials(
        root_certificates=pki.ca.read_bytes(),
        private_key=client[1].read_bytes() if client else None,
        certificate_chain=client[0].read_bytes() if client else None)
    return grpc.secure_channel(f"{host}:{port}", credentials)


def is_active(channel) -> bool:
    from smoelib.keda_proto.externalscaler_pb2_grpc import ExternalScalerStub

    return ExternalScalerStub(channel).IsActive(ref(), timeout=5).result


def test_server_tls_with_ca_cert(store, pki):
    tls = TlsMaterial.from_files(cert=pki.server_cert, key=pki.server_key)
    with running_scaler(store, tls=tls) as s:
        for host in ("127.0.0.1", "localhost"):
            with secure(s.port, pki, host=host) as channel:
                assert is_active(channel) is True
        with grpc.insecure_channel(f"127.0.0.1:{s.port}") as plain:
            with pytest.raises(grpc.RpcError) as e:
                is_active(plain)
            assert e.value.code() is grpc.StatusCode.UNAVAILABLE


def test_mtls_requires_a_client_cert_from_the_ca(store, pki):
    tls = TlsMaterial.from_files(cert=pki.server_cert, key=pki.server_key,
                                 client_ca=pki.ca)
    with running_scaler(store, tls=tls) as s:
        with secure(s.port, pki, client=(pki.client_cert, pki.client_key)) as channel:
            assert is_active(channel) is True
        for client in (None, (pki.rogue_cert, pki.rogue_key)):
            with secure(s.port, pki, client=client) as channel:
                with pytest.raises(grpc.RpcError) as e:
                    is_active(channel)
                assert e.value.code() is grpc.StatusCode.UNAVAILABLE


def test_bad_tls_files_are_named(pki, tmp_path):
    with pytest.raises(ConfigError) as e:
        TlsMaterial.from_files(cert=tmp_path / "missing.pem", key=pki.server_key)
    assert e.value.lines() == [f"{tmp_path / 'missing.pem'}: --tls-cert: cannot read: "
                               "No such file or directory"]
    with pytest.raises(ConfigError, match="--tls-key: does not match --tls-cert"):
        TlsMaterial.from_files(cert=pki.server_cert, key=pki.client_key)
    with pytest.raises(ConfigError, match="--tls-key: not a PEM private key"):
        TlsMaterial.from_files(cert=pki.server_cert, key=pki.server_cert)
    with pytest.raises(ConfigError, match="--tls-client-ca: not a PEM CA certificate"):
        TlsMaterial.from_files(cert=pki.server_cert, key=pki.server_key,
                               client_ca=pki.server_key)
