"""The balancer's health probes dial TLS and mTLS backends with the
backend CA (and client certificate) it is given: such backends stay
SERVING. Without it, a TLS backend fails its probes with a detail that
names the TLS mismatch."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from lookaside.certs import Issued, issue
from lookaside_registry import keys
from lookaside_registry.model import PoolConfig
from tests.support import BalancerHandle, RouteGuideBackend, wait_until

FAST = dict(
    health_interval_ms=150, health_timeout_ms=500, unhealthy_threshold=2, healthy_threshold=1
)


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Issued:
    return issue(tmp_path_factory.mktemp("certs"), zone="lookaside.test")


@pytest.fixture(scope="module")
def other_certs(tmp_path_factory: pytest.TempPathFactory) -> Issued:
    """A second, unrelated CA (and its server certificate)."""
    return issue(tmp_path_factory.mktemp("other"), zone="other.test")


def tls(certs: Issued, mtls: bool = False) -> grpc.ServerCredentials:
    return grpc.ssl_server_credentials(
        [(certs.server_key.read_bytes(), certs.server_cert.read_bytes())],
        root_certificates=certs.ca.read_bytes() if mtls else None,
        require_client_auth=mtls,
    )


@pytest.fixture
def started() -> Iterator[list[RouteGuideBackend]]:
    out: list[RouteGuideBackend] = []
    yield out
    for b in out:
        b.stop()


def run_pool(
    redis_url: str,
    pool: str,
    backends: list[RouteGuideBackend],
    redis_client,  # type: ignore[no-untyped-def]
    **settings: str,
) -> BalancerHandle:
    """A health-checking balancer with `settings`, the backends registered;
    returns once each backend has been probed three times."""
    handle = BalancerHandle(redis_url, replica_id="solo", **settings)
    handle.run(handle.store.put_pool(PoolConfig.from_flat(pool, **FAST)))
    for b in backends:
        handle.run(
            handle.store.register(
                pool=pool, host="127.0.0.1", ip="127.0.0.1", port=b.port, lease_ttl_ms=60_000
            )
        )
    from balancer_server import metrics

    def probes() -> float:
        return sum(metrics.HEALTH_PROBES.labels(pool, kind)._value.get() for kind in ("ok", "fail"))

    wait_until(lambda: probes() >= 3 * len(backends), timeout=20)
    return handle


def states(redis_client, pool: str) -> dict[int, tuple[str, str]]:  # type: ignore[no-untyped-def]
    out = {}
    for raw in redis_client.hvals(keys.backends(pool)):
        b = json.loads(raw)
        out[b["port"]] = (b["state"], b.get("health_detail", ""))
    return out


def all_serving(redis_client, pool: str, n: int) -> bool:  # type: ignore[no-untyped-def]
    found = states(redis_client, pool)
    return len(found) == n and all(s == "serving" for s, _ in found.values())


@pytest.mark.parametrize("mtls", [False, True], ids=["tls", "mtls"])
def test_tls_backends_stay_serving_with_the_backend_ca(
    redis_url: str, pool_name: str, certs: Issued, started, redis_client, mtls: bool
) -> None:  # type: ignore[no-untyped-def]
    started += [RouteGuideBackend().start(tls(certs, mtls)) for _ in range(3)]
    client = {"backend_tls_cert": str(certs.client_cert), "backend_tls_key": str(certs.client_key)}
    handle = run_pool(
        redis_url, pool_name, started, redis_client,
        backend_tls_ca=str(certs.ca), **(client if mtls else {}),
    )  # fmt: skip
    try:
        assert all_serving(redis_client, pool_name, 3), states(redis_client, pool_name)
        from balancer_server import metrics

        assert metrics.HEALTH_PROBES.labels(pool_name, "fail")._value.get() == 0
        assert metrics.HEALTH_PROBES.labels(pool_name, "ok")._value.get() >= 3
    finally:
        handle.stop()


def test_plaintext_probes_of_tls_backends_fail_naming_tls(
    redis_url: str, pool_name: str, certs: Issued, started, redis_client
) -> None:  # type: ignore[no-untyped-def]
    """What `lookaside up --tls` did before the balancer had a backend CA:
    every probe failed. The panic guard keeps some listed; the detail says
    why they fail."""
    started += [RouteGuideBackend().start(tls(certs)) for _ in range(2)]
    handle = run_pool(redis_url, pool_name, started, redis_client)
    try:
        from balancer_server import metrics

        wait_until(lambda: metrics.HEALTH_PROBES.labels(pool_name, "fail")._value.get() >= 4)
        assert metrics.HEALTH_PROBES.labels(pool_name, "ok")._value.get() == 0
        wait_until(
            lambda: any(s == "unhealthy" for s, _ in states(redis_client, pool_name).values())
        )
        details = {d for s, d in states(redis_client, pool_name).values() if s == "unhealthy"}
        assert details and all("TLS" in d for d in details), details
    finally:
        handle.stop()


def test_mtls_backends_without_a_client_certificate_fail_naming_it(
    redis_url: str, pool_name: str, certs: Issued, started, redis_client
) -> None:  # type: ignore[no-untyped-def]
    started += [RouteGuideBackend().start(tls(certs, mtls=True)) for _ in range(2)]
    handle = run_pool(redis_url, pool_name, started, redis_client, backend_tls_ca=str(certs.ca))
    try:
        from balancer_server import metrics

        assert metrics.HEALTH_PROBES.labels(pool_name, "ok")._value.get() == 0
        wait_until(
            lambda: any(s == "unhealthy" for s, _ in states(redis_client, pool_name).values())
        )
        details = {d for s, d in states(redis_client, pool_name).values() if s == "unhealthy"}
        assert details and all("--backend-tls-cert" in d for d in details), details
    finally:
        handle.stop()


def test_server_name_override_with_the_pool_name(
    redis_url: str, pool_name: str, certs: Issued, started, redis_client
) -> None:  # type: ignore[no-untyped-def]
    """Backends whose certificates do not name their address (pod IPs) are
    checked against a name; {pool} is the pool's."""
    started += [RouteGuideBackend().start(tls(certs)) for _ in range(2)]
    handle = run_pool(
        redis_url, pool_name, started, redis_client,
        backend_tls_ca=str(certs.ca), backend_tls_server_name="{pool}.lookaside.test",
    )  # fmt: skip
    try:
        assert all_serving(redis_client, pool_name, 2), states(redis_client, pool_name)
    finally:
        handle.stop()
    # A name the certificate does not carry fails verification.
    wrong = f"{pool_name}-wrong"
    handle = run_pool(
        redis_url, wrong, started, redis_client,
        backend_tls_ca=str(certs.ca), backend_tls_server_name="{pool}.elsewhere.test",
    )  # fmt: skip
    try:
        from balancer_server import metrics

        assert metrics.HEALTH_PROBES.labels(wrong, "ok")._value.get() == 0
    finally:
        handle.stop()


def test_a_backend_of_another_ca_is_not_trusted(
    redis_url: str, pool_name: str, certs: Issued, other_certs: Issued, started, redis_client
) -> None:  # type: ignore[no-untyped-def]
    started += [RouteGuideBackend().start(tls(other_certs)) for _ in range(2)]
    handle = run_pool(redis_url, pool_name, started, redis_client, backend_tls_ca=str(certs.ca))
    try:
        from balancer_server import metrics

        assert metrics.HEALTH_PROBES.labels(pool_name, "ok")._value.get() == 0
    finally:
        handle.stop()


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--backend-tls-server-name", "x.test"], "need --backend-tls-ca"),
        (["--backend-tls-cert", "{cert}"], "need --backend-tls-ca"),
        (["--backend-tls-ca", "{ca}", "--backend-tls-cert", "{cert}"], "--backend-tls-key"),
        (["--backend-tls-ca", "/nonexistent/ca.pem"], "does not exist"),
    ],
)
def test_incomplete_backend_tls_settings_are_one_line_errors(
    certs: Issued, tmp_path: Path, flags: list[str], message: str
) -> None:
    argv = [f.format(ca=certs.ca, cert=certs.client_cert) for f in flags]
    done = subprocess.run(
        [sys.executable, "-m", "lookaside", "balancer", "--listen", "127.0.0.1:0", *argv],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2, done
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], done.stderr
    assert "backend-tls" in lines[0]
