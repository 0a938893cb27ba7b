"""Redis over TLS (rediss://) with an ACL user limited to Lookaside's keys
and channel: a real redis-server started with --tls-port, the balancer on
it end to end, and the user refused everything else."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import pytest
import redis

from lookaside.certs import Issued, issue
from lookaside.redis_process import find_redis_server, free_port
from lookaside_registry import keys
from tests.support import BalancerHandle, LbStream, missing_tool

PASSWORD = "acl-password-0123456789abcdef"
# The ACL of docs/security.md: Lookaside's keys and channel, no dangerous
# or admin commands.
ACL = f"lookaside on >{PASSWORD} resetkeys ~lookaside:* resetchannels &lookaside:* -@all +@read +@write +@keyspace +@hash +@set +@sortedset +@list +@string +@scripting +@pubsub +@connection +@transaction +time -@dangerous"


def redis_supports_tls() -> bool:
    out = subprocess.run(
        [find_redis_server(), "--port", "0", "--tls-port", "0"],
        capture_output=True, text=True, timeout=10, check=False,
    )  # fmt: skip
    return "Configured to not listen anywhere" in out.stdout + out.stderr


@pytest.fixture(scope="module")
def tls_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[int, Issued]]:
    if not redis_supports_tls():
        missing_tool("needs a redis-server built with TLS (Debian's redis-server is)")
    certs = issue(tmp_path_factory.mktemp("redis-certs"))
    port = free_port()
    proc = subprocess.Popen(
        [find_redis_server(), "--port", "0", "--tls-port", str(port), "--bind", "127.0.0.1",
         "--tls-cert-file", str(certs.server_cert), "--tls-key-file", str(certs.server_key),
         "--tls-ca-cert-file", str(certs.ca), "--tls-auth-clients", "no",
         "--save", "", "--appendonly", "no", "--user", "default", "off", "--user", *ACL.split()],
        stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
    )  # fmt: skip
    client = redis.Redis(
        host="127.0.0.1", port=port, ssl=True, ssl_ca_certs=str(certs.ca),
        username="lookaside", password=PASSWORD,
    )  # fmt: skip
    deadline = time.monotonic() + 10
    while True:
        try:
            client.ping()
            break
        except redis.exceptions.ConnectionError:
            if time.monotonic() > deadline:
                proc.kill()
                raise
            time.sleep(0.05)
    client.close()
    yield port, certs
    proc.terminate()
    proc.wait(10)


def url(port: int, certs: Issued, password: str = PASSWORD) -> str:
    return (
        f"rediss://lookaside:{quote(password)}@127.0.0.1:{port}/0"
        f"?ssl_ca_certs={quote(str(certs.ca))}&ssl_cert_reqs=required"
    )


def test_balancer_runs_on_tls_redis_with_a_limited_acl_user(
    tls_redis: tuple[int, Issued], pool_name: str, tmp_path: Path
) -> None:
    port, certs = tls_redis
    # The URL (with its password) comes from a file, not a flag.
    url_file = tmp_path / "redis-url"
    url_file.write_text(url(port, certs))
    balancer = BalancerHandle("redis://unused:1/0", redis_url_file=str(url_file))
    try:
        balancer.run(
            balancer.store.register(pool=pool_name, host="127.0.0.1", ip="127.0.0.1", port=7200)
        )
        stream = LbStream(balancer.address, pool_name)
        assert [a for a, _, _ in stream.next_list()] == ["127.0.0.1:7200"]
        stream.close()
    finally:
        balancer.stop()
    client = redis.Redis.from_url(url(port, certs), decode_responses=True)
    try:
        assert client.hlen(keys.backends(pool_name)) == 1
        with pytest.raises(redis.exceptions.NoPermissionError):
            client.set("other-app:key", "x")
        with pytest.raises(redis.exceptions.NoPermissionError):
            client.flushall()
        with pytest.raises(redis.exceptions.NoPermissionError):
            client.publish("other-channel", "x")
    finally:
        client.close()


def test_plaintext_and_the_default_user_are_refused(tls_redis: tuple[int, Issued]) -> None:
    port, certs = tls_redis
    plain = redis.Redis(host="127.0.0.1", port=port, socket_timeout=2)
    with pytest.raises(redis.exceptions.ConnectionError):
        plain.ping()
    default = redis.Redis(host="127.0.0.1", port=port, ssl=True, ssl_ca_certs=str(certs.ca))
    with pytest.raises(redis.exceptions.AuthenticationError):
        default.ping()
    wrong = redis.Redis.from_url(url(port, certs, password="wrong-password-000000000"))
    with pytest.raises(redis.exceptions.AuthenticationError):
        wrong.ping()
