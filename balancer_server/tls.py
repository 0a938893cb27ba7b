"""TLS for the balancer, from PEM files: the server credentials of its own
port, and the channel credentials it dials its backends with.

--tls-cert and --tls-key serve TLS; --tls-client-ca adds mutual TLS. grpcio
can only verify client certificates that it also requires, so
--tls-client-ca alone makes the server request and verify a certificate
from every client, as does --require-client-cert (which without
--tls-client-ca is an error). Registration identities (SAN or CN) come
from the verified certificate.

--backend-tls-ca makes the balancer's own connections to backends (its
grpc.health.v1 probes) TLS, verified with that CA; --backend-tls-server-name
is the name the backends' certificates are checked against (default: the
address dialled), where `{pool}` stands for the pool's name; and
--backend-tls-cert/--backend-tls-key are the client certificate for
backends that require mutual TLS.

The same settings tell xDS clients how to reach the backends: a pool's
Cluster then carries an UpstreamTlsContext (balancer_server.xds.resources).
"""

from __future__ import annotations

from pathlib import Path

import grpc
import grpc.aio

from server_common.settings import check_backend_tls, check_key_pair


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
    try:
        check_key_pair(cert, key)
    except ValueError as exc:
        raise TlsConfigError(str(exc)) from None
    roots = _read(client_ca, "client CA") if client_ca else None
    return grpc.ssl_server_credentials(
        [pair], root_certificates=roots, require_client_auth=roots is not None
    )


class BackendTls:
    """How the balancer dials the backends it probes: plaintext, or TLS with
    a CA (and a client certificate for mTLS) and an optional server name."""

    def __init__(
        self,
        credentials: grpc.ChannelCredentials | None = None,
        server_name: str = "",
        client_certificate: bool = False,
    ) -> None:
        self.credentials = credentials
        self.server_name = server_name
        self.client_certificate = client_certificate

    @classmethod
    def from_files(
        cls, ca: str = "", cert: str = "", key: str = "", server_name: str = ""
    ) -> BackendTls:
        try:
            check_backend_tls(ca, cert, key, server_name)
        except ValueError as exc:
            raise TlsConfigError(str(exc)) from None
        if not ca:
            return cls()
        credentials = grpc.ssl_channel_credentials(
            root_certificates=_read(ca, "backend CA"),
            private_key=_read(key, "backend client key") if key else None,
            certificate_chain=_read(cert, "backend client certificate") if cert else None,
        )
        return cls(credentials, server_name.strip(), client_certificate=bool(cert))

    @property
    def mode(self) -> str:
        return "plaintext" if self.credentials is None else "TLS"

    def channel(self, address: str, pool: str) -> grpc.aio.Channel:
        """A channel to one backend of `pool` at `address` (host:port)."""
        if self.credentials is None:
            return grpc.aio.insecure_channel(address)
        options = []
        name = self.server_name_for(pool)
        if name:
            options.append(("grpc.ssl_target_name_override", name))
        return grpc.aio.secure_channel(address, self.credentials, options=options)

    def server_name_for(self, pool: str) -> str:
        """The name `pool`'s backends' certificates must carry ("" for the
        address dialled): the balancer's probes check it, and xDS clients
        are told to (balancer_server.xds.resources)."""
        return self.server_name.replace("{pool}", pool)
