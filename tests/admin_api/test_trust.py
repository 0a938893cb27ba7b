"""The admin API refuses what it must before doing any work: requests with
no token or a wrong one (schemathesis over every operation; nothing is
written to Redis), and bodies over the limit (413 before the body is read,
and before authentication)."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from typing import Any

import hypothesis
import pytest
import redis
import requests
import schemathesis

from admin_api.openapi import openapi_document
from lookaside.redis_process import RedisProcess
from lookaside_registry import keys
from tests.admin_api.conftest import AUTH, TOKEN
from tests.admin_api.test_schemathesis import AdminServer

MAX_EXAMPLES = 8

schema = schemathesis.openapi.from_dict(openapi_document())


@pytest.fixture(scope="module")
def own_redis() -> Iterator[RedisProcess]:
    # A Redis of this module's own: "nothing changed" must not see the
    # writes of other tests' balancers and admin processes.
    proc = RedisProcess().start()
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def admin_server(own_redis: RedisProcess) -> Iterator[AdminServer]:
    server = AdminServer(own_redis.url)
    yield server
    server.stop()


@pytest.fixture
def own_client(own_redis: RedisProcess) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(own_redis.url, decode_responses=True)
    yield client
    client.close()


def registry_state(client: redis.Redis) -> tuple[set[str], int]:
    return set(client.smembers(keys.POOLS)), len(client.keys("lookaside:*"))


@pytest.mark.parametrize(
    "headers",
    [{}, {"Authorization": "Bearer wrong-token-0123456789abcdef"}, {"Authorization": "Basic x"}],
)
@schema.include(path_regex="^/api/").parametrize()
@hypothesis.settings(
    max_examples=MAX_EXAMPLES,
    deadline=None,
    suppress_health_check=list(hypothesis.HealthCheck),
    database=None,
    derandomize=True,
)
def test_no_token_or_a_wrong_one_changes_nothing(
    case: Any, headers: dict[str, str], admin_server: AdminServer, own_client
) -> None:  # type: ignore[no-untyped-def]
    case.headers = {k: v for k, v in (case.headers or {}).items() if k.lower() != "authorization"}
    before = registry_state(own_client)
    response = case.call(base_url=admin_server.url, headers=headers, timeout=10)
    # A request that is malformed may be refused for that first (405, 413,
    # 422); it is never served, and never a 500.
    assert response.status_code in (401, 405, 413, 422), (
        response.status_code,
        response.text[:200],
    )
    if response.status_code == 401:
        assert "Bearer" in str(response.headers.get("www-authenticate"))
    assert "wrong-token" not in response.text
    assert registry_state(own_client) == before


def test_large_body_is_refused_before_it_is_read(admin_server: AdminServer) -> None:
    # Announce 100 MB, send 10 bytes: the answer comes without the rest.
    with socket.create_connection(("127.0.0.1", admin_server.port), timeout=5) as sock:
        sock.sendall(
            b"POST /api/v1/pools HTTP/1.1\r\nHost: admin\r\nContent-Type: application/json\r\n"
            b"Authorization: Bearer " + TOKEN.encode() + b"\r\n"
            b'Content-Length: 104857600\r\n\r\n{"name":"x'
        )
        data = b""
        while b"larger than" not in data:
            chunk = sock.recv(4096)
            if not chunk:
                break
            data += chunk
        head = data.decode()
    assert head.startswith("HTTP/1.1 413"), head
    assert "larger than 1048576 bytes" in head


def test_chunked_body_is_cut_off_at_the_limit(admin_server: AdminServer) -> None:
    def chunks() -> Iterator[bytes]:
        for _ in range(64):
            yield b"x" * 65536  # 4 MiB in all, no Content-Length

    response = requests.post(
        f"{admin_server.url}/api/v1/pools",
        data=chunks(),
        headers={"Content-Type": "application/json", **AUTH},
        timeout=10,
    )
    assert response.status_code == 413
    metrics = requests.get(f"{admin_server.url}/metrics", headers=AUTH, timeout=5).text
    assert "lookaside_admin_bodies_refused_total" in metrics


def test_admin_api_over_https(redis_url: str, tmp_path) -> None:  # type: ignore[no-untyped-def]
    import asyncio

    from admin_api.server import build_server
    from lookaside.certs import issue
    from lookaside.redis_process import free_port
    from tests.admin_api.conftest import make_settings
    from tests.support import LoopThread, wait_until

    certs = issue(tmp_path)
    (tmp_path / "token").write_text(TOKEN + "\n")
    port = free_port()
    settings = make_settings(
        redis_url,
        listen=f"127.0.0.1:{port}",
        token="",
        token_file=str(tmp_path / "token"),
        tls_cert=str(certs.server_cert),
        tls_key=str(certs.server_key),
    )
    loop = LoopThread("admin-tls")
    server = build_server(settings)
    done = asyncio.run_coroutine_threadsafe(server.serve(), loop.loop)
    try:
        wait_until(lambda: server.started or done.done(), timeout=10)
        url = f"https://127.0.0.1:{port}"
        ok = requests.get(f"{url}/api/v1/pools", headers=AUTH, verify=str(certs.ca), timeout=5)
        assert ok.status_code == 200
        with pytest.raises(requests.exceptions.SSLError):
            requests.get(f"{url}/healthz", timeout=5)  # not trusted without the CA
        with pytest.raises(requests.exceptions.ConnectionError):
            requests.get(f"http://127.0.0.1:{port}/healthz", timeout=2)
    finally:
        server.should_exit = server.force_exit = True
        done.result(timeout=10)
        loop.close()
