"""Nobody holds the admin API: a real uvicorn server (admin_api.server)
closes silent, slow-header, slow-body and idle connections, refuses
connections past its caps, and answers 401 to a request without the token
before reading its body. Every client here is a raw socket, so the test
sees exactly what the server does with the bytes it has."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator

import pytest
import requests

from lookaside.redis_process import RedisProcess
from tests.admin_api.conftest import AUTH, TOKEN
from tests.admin_api.test_schemathesis import AdminServer

# Generous bounds: the server's timeouts below are 1 to 1.5 s; a closing
# that takes longer than this on a loaded machine is still "closed".
CLOSED_WITHIN = 8.0


@pytest.fixture(scope="module")
def own_redis() -> Iterator[RedisProcess]:
    proc = RedisProcess().start()
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def strict(own_redis: RedisProcess) -> Iterator[AdminServer]:
    server = AdminServer(
        own_redis.url, header_timeout=1.0, body_timeout=1.5, keep_alive_timeout=1.0
    )
    yield server
    server.stop()


@pytest.fixture(scope="module")
def capped(own_redis: RedisProcess) -> Iterator[AdminServer]:
    server = AdminServer(own_redis.url, max_connections_per_address=4, header_timeout=30.0)
    yield server
    server.stop()


def closed_after(sock: socket.socket, drip: bytes = b"", every: float = 0.2) -> tuple[float, bytes]:
    """Seconds until the server closes `sock` (dripping a byte of `drip`
    every `every` seconds meanwhile), and what it sent; fails after
    CLOSED_WITHIN seconds."""
    start = time.monotonic()
    sock.settimeout(every)
    got = b""
    sent = 0
    while time.monotonic() - start < CLOSED_WITHIN:
        try:
            if sent < len(drip):
                sock.sendall(drip[sent : sent + 1])
                sent += 1
            chunk = sock.recv(65536)
        except TimeoutError:
            continue
        except (ConnectionResetError, BrokenPipeError):
            return time.monotonic() - start, got
        if not chunk:
            return time.monotonic() - start, got
        got += chunk
    pytest.fail(f"the connection was still open after {CLOSED_WITHIN} s (got {got[:80]!r})")


def connect(server: AdminServer) -> socket.socket:
    return socket.create_connection(("127.0.0.1", server.port), timeout=5)


def test_a_silent_connection_is_closed(strict: AdminServer) -> None:
    with connect(strict) as sock:
        elapsed, got = closed_after(sock)
    assert got == b"" and 0.8 < elapsed < CLOSED_WITHIN


def test_a_slow_header_connection_without_token_is_closed(strict: AdminServer) -> None:
    with connect(strict) as sock:
        sock.sendall(b"GET /api/v1/pools HTTP/1.1\r\nHost: admin\r\n")
        # One byte of a never-ending header every 0.2 s.
        elapsed, got = closed_after(sock, drip=b"X-Slow: " + b"a" * 100)
    assert got == b"" and elapsed < CLOSED_WITHIN


def test_a_slow_body_is_cut_off(strict: AdminServer) -> None:
    with connect(strict) as sock:
        sock.sendall(
            b"POST /api/v1/pools HTTP/1.1\r\nHost: admin\r\nContent-Type: application/json\r\n"
            b"Authorization: Bearer " + TOKEN.encode() + b"\r\nContent-Length: 5000\r\n\r\n"
        )
        elapsed, _ = closed_after(sock, drip=b'{"name":"slow"' + b" " * 100)
    assert elapsed < CLOSED_WITHIN


def test_an_idle_connection_after_a_response_is_closed(strict: AdminServer) -> None:
    with connect(strict) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: admin\r\n\r\n")
        elapsed, got = closed_after(sock)
    assert got.startswith(b"HTTP/1.1 200") and elapsed < CLOSED_WITHIN


@pytest.mark.parametrize(
    "request_head",
    [
        # 900 KB announced, 10 bytes sent.
        b"Content-Type: application/json\r\nContent-Length: 900000\r\n\r\n" + b'{"name":"x',
        # Chunked: the first chunk of many.
        b"Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
        + b"10000\r\n"
        + b"[" * 0x10000
        + b"\r\n",
    ],
    ids=["content-length", "chunked"],
)
@pytest.mark.parametrize(
    "authorization", [b"", b"Authorization: Bearer wrong-token-0123456789\r\n"]
)
def test_no_token_is_401_before_the_body_is_read(
    strict: AdminServer, request_head: bytes, authorization: bytes
) -> None:
    with connect(strict) as sock:
        sock.sendall(
            b"POST /api/v1/pools HTTP/1.1\r\nHost: admin\r\n" + authorization + request_head
        )
        # The rest of the body never comes: the answer does, and the close.
        elapsed, got = closed_after(sock)
    assert got.startswith(b"HTTP/1.1 401"), got[:200]
    assert b"www-authenticate: Bearer" in got.lower().replace(b"bearer", b"Bearer")
    assert elapsed < 1.0  # not the body timeout: the server did not wait for the body


def test_deep_json_without_token_is_401_not_parsed(strict: AdminServer) -> None:
    body = "[" * 100_000
    response = requests.post(
        f"{strict.url}/api/v1/pools",
        data=body,
        headers={"Content-Type": "application/json"},
        timeout=10,
    )
    assert response.status_code == 401


def test_metrics_need_the_token(strict: AdminServer) -> None:
    assert requests.get(f"{strict.url}/metrics", timeout=5).status_code == 401
    metrics = requests.get(f"{strict.url}/metrics", headers=AUTH, timeout=5)
    assert metrics.status_code == 200
    assert "lookaside_admin_connections_refused_total" in metrics.text


def test_connections_past_the_per_address_cap_are_refused(capped: AdminServer) -> None:
    held = [connect(capped) for _ in range(4)]
    try:
        # Each of the four is open: a request on one is served.
        held[0].sendall(b"GET /healthz HTTP/1.1\r\nHost: admin\r\n\r\n")
        assert held[0].recv(4096).startswith(b"HTTP/1.1 200")
        for _ in range(3):
            with connect(capped) as extra:
                elapsed, got = closed_after(extra)
            assert got.startswith(b"HTTP/1.1 503") and b"too many connections from 127.0.0.1" in got
            assert elapsed < CLOSED_WITHIN
    finally:
        for sock in held:
            sock.close()
    # Once they are closed there is room again.
    deadline = time.monotonic() + CLOSED_WITHIN
    while True:
        response = requests.get(f"{capped.url}/healthz", timeout=5)
        if response.status_code == 200 or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert response.status_code == 200


def test_swagger_ui_is_served_from_this_machine(strict: AdminServer) -> None:
    page = requests.get(f"{strict.url}/docs", timeout=5)
    assert page.status_code == 200
    assert "cdn" not in page.text and "https://" not in page.text
    assert "/docs/assets/swagger-ui-bundle.js" in page.text
    script = requests.get(f"{strict.url}/docs/assets/swagger-ui-bundle.js", timeout=5)
    assert script.status_code == 200 and len(script.content) > 100_000


def test_connections_past_the_overall_cap_are_refused(own_redis: RedisProcess) -> None:
    server = AdminServer(
        own_redis.url, max_connections=3, max_connections_per_address=100, header_timeout=30.0
    )
    held = [connect(server) for _ in range(3)]
    try:
        held[0].sendall(b"GET /healthz HTTP/1.1\r\nHost: admin\r\n\r\n")
        assert held[0].recv(4096).startswith(b"HTTP/1.1 200")
        with connect(server) as extra:
            _, got = closed_after(extra)
        assert got.startswith(b"HTTP/1.1 503") and b"too many connections to the admin API" in got
    finally:
        for sock in held:
            sock.close()
        server.stop()
