"""Server credentials for the balancer's port from PEM files.

--tls-cert and --tls-key serve TLS; --tls-client-ca adds mutual TLS. grpcio
can only verify client certificates that it also requires, so
--tls-client-ca alone makes the server request and verify a certificate
from every client, as does --require-client-cert (which without
--tls-client-ca is an error). Registration identities (SAN or CN) come
from the verified certificate.
"""

from __future__ import annotations

from pathlib import Path

import grpc


class TlsConfigError(ValueError):
    """A TLS setting is incomplete or a file cannot be read."""


def _read(path: str, what: str) -> bytes:
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise TlsConfigError(f"{what} {path!r} cannot be read: {exc.strerror}") from None
    if b"-----BEGIN" not in data:
        raise TlsConfigError(f"{what} {path!r} is not a PEM file")
    return data


def server_credentials(
    cert: str, key: str, client_ca: str = "", require_client_cert: bool = False
) -> grpc.ServerCredentials | None:
    """The credentials for add_secure_port, or None for plaintext."""
    if not cert and not key:
        if client_ca or require_client_cert:
            raise TlsConfigError(
                "--tls-client-ca and --require-client-cert need --tls-cert and --tls-key"
            )
        return None
    if not cert or not key:
        raise TlsConfigError("give both --tls-cert and --tls-key (or neither, for plaintext)")
    if require_client_cert and not client_ca:
        raise TlsConfigError("--require-client-cert needs --tls-client-ca to verify them with")
    pair = (_read(key, "TLS key"), _read(cert, "TLS certificate"))
    roots = _read(client_ca, "client CA") if client_ca else None
    return grpc.ssl_server_credentials(
        [pair], root_certificates=roots, require_client_auth=roots is not None
    )
