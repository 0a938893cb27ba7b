"""`lookaside health-probe`, the containers' and probes' health check,
against a real balancer, a real demo backend and a real admin process."""

from __future__ import annotations

import pytest

from lookaside.cli import main
from lookaside.demo.server import RouteGuideServer
from lookaside.demo.settings import ServerSettings
from tests.admin_api.conftest import TOKEN
from tests.admin_api.process import AdminProcess, clean_env
from tests.support import BalancerHandle, LoopThread, wait_until


def probe(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    capsys.readouterr()
    code = main(["health-probe", *argv, "--timeout", "5"])
    out, err = capsys.readouterr()
    return code, out + err


def test_grpc_health(balancer: BalancerHandle, capsys: pytest.CaptureFixture[str]) -> None:
    code, text = probe(capsys, balancer.address)
    assert code == 0 and "SERVING" in text
    code, text = probe(capsys, balancer.address, "--service", "no.such.Service")
    assert code == 1 and "NOT_FOUND" in text


def test_a_server_shutting_down_is_unhealthy(capsys: pytest.CaptureFixture[str]) -> None:
    loop = LoopThread("probe")
    server = RouteGuideServer(ServerSettings(listen="127.0.0.1:0", grace=0.0))
    port = loop.run(server.start())
    try:
        assert probe(capsys, f"127.0.0.1:{port}")[0] == 0
        loop.run(server.health.enter_graceful_shutdown())
        code, text = probe(capsys, f"127.0.0.1:{port}")
        assert code == 1 and "NOT_SERVING" in text
    finally:
        loop.run(server.stop(0))
        loop.close()
    code, text = probe(capsys, f"127.0.0.1:{port}")
    assert code == 1 and "UNAVAILABLE" in text


def test_http_and_bad_targets(redis_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    admin = AdminProcess(redis_url, env=clean_env(LOOKASIDE_ADMIN_TOKEN=TOKEN)).wait_ready()
    try:
        assert probe(capsys, f"{admin.url}/readyz")[0] == 0
        code, text = probe(capsys, f"{admin.url}/no-such-page")
        assert code == 1 and "HTTP 404" in text
    finally:
        admin.stop()
    code, text = probe(capsys, "localhost")
    assert code == 2 and "no port" in text


def test_grpc_and_https_over_tls(
    redis_url: str, tmp_path, capsys: pytest.CaptureFixture[str]
) -> None:  # type: ignore[no-untyped-def]
    from lookaside.certs import issue

    certs = issue(tmp_path / "certs")
    tls = BalancerHandle(redis_url, tls_cert=str(certs.server_cert), tls_key=str(certs.server_key))
    try:
        code, text = probe(capsys, tls.address, "--tls-ca", str(certs.ca))
        assert code == 0 and "SERVING" in text
        code, text = probe(
            capsys, tls.address, "--tls-ca", str(certs.ca), "--server-name", "x.lookaside.test"
        )
        assert code == 0 and "SERVING" in text
        assert probe(capsys, tls.address)[0] == 1  # plaintext to a TLS port
        code, text = probe(capsys, tls.address, "--server-name", "x.lookaside.test")
        assert code == 2 and "need --tls-ca" in text
    finally:
        tls.stop()
    admin = AdminProcess(
        redis_url,
        *("--tls-cert", str(certs.server_cert), "--tls-key", str(certs.server_key)),
        env=clean_env(LOOKASIDE_ADMIN_TOKEN=TOKEN),
    )
    url = f"https://127.0.0.1:{admin.port}/readyz"
    try:
        wait_until(lambda: probe(capsys, url, "--tls-ca", str(certs.ca))[0] == 0, timeout=30)
        code, text = probe(capsys, url)  # the system's roots do not know the lab CA
        assert code == 1 and "CERTIFICATE_VERIFY_FAILED" in text, text
    finally:
        admin.stop()
