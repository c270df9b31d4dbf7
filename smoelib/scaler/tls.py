"""Server TLS material: what KEDA's ``enableTLS`` / ``caCert`` / ``tlsClientCert`` /
``tlsClientKey`` expect on the other end.

KEDA verifies the server certificate against ``caCert`` (so its SAN must match the host of
``scalerAddress``); with a client CA here, the server demands and verifies KEDA's client
certificate (mTLS).
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from pathlib import Path

import grpc

from smoelib.errors import ConfigError, Problem

__all__ = ["TlsMaterial"]


@dataclass(frozen=True)
class TlsMaterial:
    """PEM bytes: the server's ``cert_chain`` and ``private_key``; ``client_ca`` turns on mTLS
    (client certificates required and verified against it)."""

    cert_chain: bytes
    private_key: bytes
    client_ca: bytes | None = None

    @classmethod
    def from_files(cls, *, cert: str | Path, key: str | Path,
                   client_ca: str | Path | None = None) -> TlsMaterial:
        """Read and check the PEM files (certificate parses, key matches it, CA parses).

        Raises:
            ConfigError: naming the file (and the option) that is missing or wrong.
        """
        fields = {"--tls-cert": cert, "--tls-key": key}
        if client_ca is not None:
            fields["--tls-client-ca"] = client_ca
        data: dict[str, bytes] = {}
        for option, path in fields.items():
            try:
                data[option] = Path(path).read_bytes()
            except OSError as e:
                raise ConfigError([Problem(option, f"cannot read: {e.strerror}")],
                                  source=str(path)) from e
            marker = b"PRIVATE KEY-----" if option == "--tls-key" else b"BEGIN CERTIFICATE-----"
            if marker not in data[option]:
                raise ConfigError([Problem(option, f"not a PEM {_KIND[option]}")],
                                  source=str(path))
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        try:
            context.load_cert_chain(cert, key)
        except ssl.SSLError as e:
            raise ConfigError([Problem("--tls-key", f"does not match --tls-cert {cert} or does "
                                       f"not parse ({e.reason or e})")], source=str(key)) from e
        if client_ca is not None:
            try:
                context.load_verify_locations(cafile=client_ca)
            except ssl.SSLError as e:
                raise ConfigError([Problem("--tls-client-ca", f"not a PEM CA certificate "
                                           f"({e.reason or e})")], source=str(client_ca)) from e
        return cls(data["--tls-cert"], data["--tls-key"], data.get("--tls-client-ca"))

    def server_credentials(self) -> grpc.ServerCredentials:
        return grpc.ssl_server_credentials(
            [(self.private_key, self.cert_chain)], root_certificates=self.client_ca,
            require_client_auth=self.client_ca is not None)


_KIND = {"--tls-cert": "certificate", "--tls-key": "private key",
         "--tls-client-ca": "CA certificate"}
