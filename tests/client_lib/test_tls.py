"""TLS on every hop the client side owns: the thin client to TLS backends
(and a TLS balancer), the server name override, the demo server's TLS and
mTLS flags, and the demo client's --tls-ca. Certificates come from openssl."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from client_lib import LookasideChannel
from lookaside.cli import main
from lookaside.demo.server import RouteGuideServer, server_credentials
from lookaside.demo.settings import ServerSettings
from tests.client_lib.scripted import ScriptedBalancer, server
from tests.demo.test_cli import parse_summary
from tests.support import LoopThread


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def _issue(d: Path, name: str, cn: str, san: str) -> None:
    _openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
             "-keyout", f"{name}-key.pem", "-out", f"{name}.csr", "-subj", f"/CN={cn}", cwd=d)  # fmt: skip
    (d / f"{name}.ext").write_text(f"subjectAltName={san}\n")
    _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca-key.pem",
             "-CAcreateserial", "-out", f"{name}.pem", "-days", "2",
             "-extfile", f"{name}.ext", cwd=d)  # fmt: skip


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("pki")
    _openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
             "-nodes", "-keyout", "ca-key.pem", "-out", "ca.pem", "-days", "2",
             "-subj", "/CN=lookaside-test-ca", cwd=d)  # fmt: skip
    _issue(d, "server", "localhost", "DNS:localhost,IP:127.0.0.1")
    _issue(d, "named", "backend.test", "DNS:backend.test")  # no IP: needs the override
    _issue(d, "client", "client", "DNS:client")
    return d


@pytest.fixture
def serve() -> Iterator:  # type: ignore[type-arg]
    loop = LoopThread("tls-server")
    started: list[RouteGuideServer] = []

    def start(**settings: str) -> RouteGuideServer:
        s = RouteGuideServer(ServerSettings(grace=0.0, **settings))  # type: ignore[arg-type]
        loop.run(s.start())
        started.append(s)
        return s

    yield start
    for s in started:
        loop.run(s.stop(0))
    loop.close()


def creds(pki: Path, client_cert: bool = False) -> grpc.ChannelCredentials:
    if not client_cert:
        return grpc.ssl_channel_credentials((pki / "ca.pem").read_bytes())
    return grpc.ssl_channel_credentials(
        (pki / "ca.pem").read_bytes(),
        (pki / "client-key.pem").read_bytes(),
        (pki / "client.pem").read_bytes(),
    )


def call(channel: grpc.Channel) -> str | grpc.StatusCode:
    from lookaside_proto.routeguide.v1 import route_guide_pb2 as rg
    from lookaside_proto.routeguide.v1 import route_guide_pb2_grpc as rg_grpc

    try:
        _, c = rg_grpc.RouteGuideStub(channel).GetFeature.with_call(rg.Point(), timeout=5)
    except grpc.RpcError as exc:
        return exc.code()  # type: ignore[no-any-return]
    return str(dict(c.initial_metadata())["x-served-by"])


def test_thin_client_to_tls_backends_through_a_tls_balancer(pki: Path, serve) -> None:  # type: ignore[no-untyped-def]
    backend = serve(
        name="tls-1", tls_cert=str(pki / "server.pem"), tls_key=str(pki / "server-key.pem")
    )
    balancer_creds = grpc.ssl_server_credentials(
        [((pki / "server-key.pem").read_bytes(), (pki / "server.pem").read_bytes())]
    )
    peer = ScriptedBalancer(balancer_creds)
    try:
        with LookasideChannel(
            "svc", peer.address, credentials=creds(pki), balancer_credentials=creds(pki)
        ) as channel:
            peer.next_stream().initial().servers(server(backend.port))
            assert call(channel) == "tls-1"
        # Plaintext to a TLS balancer gets no list (and so no backend).
        with LookasideChannel("svc", peer.address, fallback_timeout=0.5) as plain:
            assert call(plain) is grpc.StatusCode.UNAVAILABLE
    finally:
        peer.stop()


def test_server_name_override_checks_the_name_given(pki: Path, serve) -> None:  # type: ignore[no-untyped-def]
    backend = serve(
        name="named", tls_cert=str(pki / "named.pem"), tls_key=str(pki / "named-key.pem")
    )
    peer = ScriptedBalancer()
    try:
        with LookasideChannel(
            "svc", peer.address, credentials=creds(pki), server_name_override="backend.test"
        ) as channel:
            peer.next_stream().initial().servers(server(backend.port))
            assert call(channel) == "named"
        # Without the override the certificate (no 127.0.0.1 in it) is refused.
        with LookasideChannel("svc", peer.address, credentials=creds(pki)) as channel:
            peer.next_stream().initial().servers(server(backend.port))
            assert call(channel) is grpc.StatusCode.UNAVAILABLE
    finally:
        peer.stop()


def test_demo_server_mtls_requires_a_client_certificate(pki: Path, serve) -> None:  # type: ignore[no-untyped-def]
    backend = serve(
        name="mtls",
        tls_cert=str(pki / "server.pem"),
        tls_key=str(pki / "server-key.pem"),
        tls_client_ca=str(pki / "ca.pem"),
    )
    address = f"127.0.0.1:{backend.port}"
    with grpc.secure_channel(address, creds(pki, client_cert=True)) as ok:
        assert call(ok) == "mtls"
    with grpc.secure_channel(address, creds(pki)) as anonymous:
        assert call(anonymous) is grpc.StatusCode.UNAVAILABLE


def test_demo_client_tls_flags(pki: Path, serve, capsys: pytest.CaptureFixture[str]) -> None:  # type: ignore[no-untyped-def]
    backend = serve(
        name="cli-tls",
        tls_cert=str(pki / "server.pem"),
        tls_key=str(pki / "server-key.pem"),
        tls_client_ca=str(pki / "ca.pem"),
    )
    argv = ["routeguide", "client", "--lb", "none", "--server", f"127.0.0.1:{backend.port}",
            "--tls-ca", str(pki / "ca.pem"), "--tls-cert", str(pki / "client.pem"),
            "--tls-key", str(pki / "client-key.pem"), "-n", "3", "--quiet"]  # fmt: skip
    assert main(argv) == 0
    assert parse_summary(capsys.readouterr().out) == ({"cli-tls": 3}, {})


def test_bad_tls_and_token_settings_are_refused() -> None:
    with pytest.raises(ValueError, match="--tls-cert and --tls-key go together"):
        ServerSettings(tls_cert="a.pem")
    with pytest.raises(ValueError, match="not both"):
        ServerSettings(registration_token="t", registration_token_file="f")
    with pytest.raises(ValueError, match="cannot read the TLS key"):
        server_credentials(
            ServerSettings(tls_cert="/nonexistent/c.pem", tls_key="/nonexistent/k.pem")
        )
