"""Every feature with every other: {plaintext, TLS, mTLS} x health checks on
x outlier detection on x {thin sync client, thin asyncio client, stock
grpcio through the DNS responder}.

Per security mode one balancer, one DNS responder and three backends are
shared by the three client cells. The backends serve grpc.health.v1 and
register with the pool's own token (a registration policy); the balancer
probes them over the same transport its clients use. In each cell a
client makes calls for a few seconds; every call must succeed, every
backend must be used, and afterwards no backend may be unhealthy,
ejected, or held by the panic guard. Each cell's figures (calls, failed,
backends used) are printed at the end of the run (and kept in the
JUnit report as properties)."""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest

from client_lib import Registration
from lookaside.certs import Issued, issue
from lookaside_proto.routeguide.v1 import route_guide_pb2 as rg
from lookaside_proto.routeguide.v1 import route_guide_pb2_grpc as rg_grpc
from lookaside_registry.model import BackendState, PoolConfig
from tests.dns_responder.dns_handle import ZONE, DnsHandle
from tests.interop.helpers import GRPCLB_CONFIG, wait_dns_caught_up
from tests.support import BalancerHandle, RouteGuideBackend, wait_until

MODES = ("plaintext", "tls", "mtls")
CLIENTS = ("thin-sync", "thin-aio", "grpcio-dns")
BACKENDS = 3
WINDOW_S = 2.0  # seconds of calls per cell
MIN_CALLS = 60
POOL = "matrix"
TOKEN = "matrix-pool-registration-token-0123456789"

RESULTS: list[tuple[str, str, int, int, int]] = []


@dataclass
class Setup:
    mode: str
    balancer: BalancerHandle
    dns: DnsHandle
    backends: list[RouteGuideBackend]
    registrations: list[Registration]
    client_credentials: grpc.ChannelCredentials | None

    @property
    def pool(self) -> str:
        return f"{POOL}-{self.mode}"


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Issued:
    return issue(tmp_path_factory.mktemp("certs"), zone=ZONE)


def summary() -> list[str]:
    """The matrix with its figures (tests/interop/conftest.py prints it at
    the end of the run)."""
    if not RESULTS:
        return []
    lines = [
        "combination matrix (health checks on, outlier detection on, per-pool tokens):",
        f"  {'security':<10} {'client':<11} {'calls':>6} {'failed':>6}  backends used",
    ]
    for mode, client, calls, failed, used in RESULTS:
        lines.append(f"  {mode:<10} {client:<11} {calls:>6} {failed:>6}  {used} of {BACKENDS}")
    return lines


def server_credentials(mode: str, certs: Issued) -> grpc.ServerCredentials | None:
    if mode == "plaintext":
        return None
    return grpc.ssl_server_credentials(
        [(certs.server_key.read_bytes(), certs.server_cert.read_bytes())],
        root_certificates=certs.ca.read_bytes() if mode == "mtls" else None,
        require_client_auth=mode == "mtls",
    )


def client_credentials(mode: str, certs: Issued) -> grpc.ChannelCredentials | None:
    """One credential for the balancer and the backends (mTLS: with the
    client certificate both ask for)."""
    if mode == "plaintext":
        return None
    mtls = mode == "mtls"
    return grpc.ssl_channel_credentials(
        certs.ca.read_bytes(),
        certs.client_key.read_bytes() if mtls else None,
        certs.client_cert.read_bytes() if mtls else None,
    )


def balancer_settings(mode: str, certs: Issued, policy: Path) -> dict[str, Any]:
    settings: dict[str, Any] = dict(
        insecure_registration=False,
        registration_policy=str(policy),
        health_checks=True,
        replica_id=f"matrix-{mode}",
    )
    if mode != "plaintext":
        settings.update(
            tls_cert=str(certs.server_cert),
            tls_key=str(certs.server_key),
            backend_tls_ca=str(certs.ca),
        )
    if mode == "mtls":
        settings.update(
            tls_client_ca=str(certs.ca),
            require_client_cert=True,
            backend_tls_cert=str(certs.client_cert),
            backend_tls_key=str(certs.client_key),
        )
    return settings


def pool_config(pool: str) -> PoolConfig:
    """Health checks and outlier detection on, both acting within a cell."""
    return PoolConfig.from_flat(
        pool,
        report_interval_ms=1000,
        health_checks=True,
        health_interval_ms=500,
        health_timeout_ms=2000,
        outlier_detection=True,
        outlier_interval_ms=1000,
    )


@pytest.fixture(scope="module", params=MODES)
def setup(
    request: pytest.FixtureRequest, redis_url: str, certs: Issued, tmp_path_factory
) -> Iterator[Setup]:  # type: ignore[no-untyped-def]
    mode: str = request.param
    pool = f"{POOL}-{mode}"
    policy = tmp_path_factory.mktemp(mode) / "policy.json"
    policy.write_text(json.dumps({"pools": {pool: {"tokens": [TOKEN], "create": True}}}))
    balancer = BalancerHandle(redis_url, **balancer_settings(mode, certs, policy))
    backends: list[RouteGuideBackend] = []
    registrations: list[Registration] = []
    dns: DnsHandle | None = None
    try:
        balancer.run(balancer.store.put_pool(pool_config(pool)))
        creds = client_credentials(mode, certs)
        for i in range(BACKENDS):
            backend = RouteGuideBackend(f"{mode}-{i}").start(server_credentials(mode, certs))
            backends.append(backend)
            registrations.append(
                Registration(
                    balancer.address, pool, backend.port, host="127.0.0.1",
                    token=TOKEN, credentials=creds,
                ).start()
            )  # fmt: skip
        dns = DnsHandle(redis_url, balancers=balancer.address)
        # Every backend probed and found serving before any cell runs.
        from balancer_server import metrics

        wait_until(
            lambda: metrics.HEALTH_PROBES.labels(pool, "ok")._value.get() >= 2 * BACKENDS,
            timeout=30,
        )
        yield Setup(mode, balancer, dns, backends, registrations, creds)
    finally:
        for r in registrations:
            r.stop(drain=False)
        for b in backends:
            b.stop()
        if dns is not None:
            dns.stop()
        balancer.stop()


def call(stub: rg_grpc.RouteGuideStub) -> tuple[bool, str]:
    try:
        return True, stub.GetFeature(rg.Point(latitude=1, longitude=2), timeout=5).name
    except grpc.RpcError as exc:
        return False, exc.code().name


def calls_for(stub: rg_grpc.RouteGuideStub) -> Counter[str]:
    """Calls for WINDOW_S (at least MIN_CALLS): backend name, or error code."""
    seen: Counter[str] = Counter()
    end = time.monotonic() + WINDOW_S
    while time.monotonic() < end or sum(seen.values()) < MIN_CALLS:
        ok, what = call(stub)
        seen[what if ok else f"error:{what}"] += 1
    return seen


def run_thin_sync(s: Setup) -> Counter[str]:
    from client_lib import LookasideChannel

    creds = s.client_credentials
    with LookasideChannel(
        s.pool, s.balancer.address, credentials=creds, balancer_credentials=creds
    ) as channel:
        grpc.channel_ready_future(channel).result(timeout=20)
        return calls_for(rg_grpc.RouteGuideStub(channel))


def run_thin_aio(s: Setup) -> Counter[str]:
    from client_lib.aio import LookasideChannel

    async def main() -> Counter[str]:
        creds = s.client_credentials
        seen: Counter[str] = Counter()
        async with LookasideChannel(
            s.pool, s.balancer.address, credentials=creds, balancer_credentials=creds
        ) as channel:
            await asyncio.wait_for(channel.channel_ready(), 20)
            stub = rg_grpc.RouteGuideStub(channel)
            end = time.monotonic() + WINDOW_S
            while time.monotonic() < end or sum(seen.values()) < MIN_CALLS:
                try:
                    reply = await stub.GetFeature(rg.Point(latitude=1, longitude=2), timeout=5)
                    seen[reply.name] += 1
                except grpc.aio.AioRpcError as exc:
                    seen[f"error:{exc.code().name}"] += 1
        return seen

    return asyncio.run(main())


def run_grpcio_dns(s: Setup) -> Counter[str]:
    """An unmodified grpcio channel: grpclb found through the DNS
    responder's SRV records, one channel credential for all."""
    wait_dns_caught_up(s.dns, s.pool)
    target = f"dns://127.0.0.1:{s.dns.port}/{s.pool}.{ZONE}:{s.backends[0].port}"
    options = [
        ("grpc.dns_enable_srv_queries", 1),
        ("grpc.service_config", GRPCLB_CONFIG),
        ("grpc.grpclb_fallback_timeout_ms", 30_000),
    ]
    channel = (
        grpc.secure_channel(target, s.client_credentials, options=options)
        if s.client_credentials is not None
        else grpc.insecure_channel(target, options=options)
    )
    with channel:
        grpc.channel_ready_future(channel).result(timeout=20)
        return calls_for(rg_grpc.RouteGuideStub(channel))


RUNNERS = {"thin-sync": run_thin_sync, "thin-aio": run_thin_aio, "grpcio-dns": run_grpcio_dns}


def pool_health(s: Setup) -> list[tuple[int, str, int, bool]]:
    snapshot = s.balancer.run(s.balancer.store.snapshot(s.pool))
    assert snapshot is not None
    return [(b.port, b.state.value, b.guard_since_ms, b.health_failing) for b in snapshot.backends]


@pytest.mark.timeout(120)
@pytest.mark.parametrize("client", CLIENTS)
def test_every_call_succeeds_over_every_backend(
    setup: Setup, client: str, record_property: Any
) -> None:
    from balancer_server import metrics

    before = {b.name: b.tokens.copy() for b in setup.backends}
    seen = RUNNERS[client](setup)
    calls = sum(seen.values())
    failed = sum(n for k, n in seen.items() if k.startswith("error:"))
    used = {k for k in seen if not k.startswith("error:")}
    RESULTS.append((setup.mode, client, calls, failed, len(used)))
    for key, value in (("calls", calls), ("failed", failed), ("backends_used", len(used))):
        record_property(key, value)
    print(f"{setup.mode} {client}: {calls} calls, {failed} failed, per backend {dict(seen)}")
    assert failed == 0, seen
    assert used == {b.name for b in setup.backends}, seen
    # Spread: no backend got most of the calls.
    assert max(seen.values()) < 0.7 * calls, seen
    # The calls came through the balancer's lists (each carried a token).
    for b in setup.backends:
        assert set(b.tokens - before[b.name]) - {""}, (b.name, b.tokens)
    # Health checks and outlier detection ran, and left every backend in:
    # no failed probe, no ejection, no panic guard episode.
    snapshot = setup.balancer.run(setup.balancer.store.snapshot(setup.pool))
    assert snapshot.config.health_checks.enabled and snapshot.config.outlier_detection.enabled
    assert metrics.HEALTH_PROBES.labels(setup.pool, "ok")._value.get() > 0
    assert metrics.HEALTH_PROBES.labels(setup.pool, "fail")._value.get() == 0
    assert metrics.OUTLIER_EJECTIONS.labels(setup.pool)._value.get() == 0
    for source in ("health", "outlier", "lease"):
        assert metrics.PANICS.labels(setup.pool, source)._value.get() == 0, source
    health = pool_health(setup)
    assert len(health) == BACKENDS
    assert all(state == BackendState.SERVING.value for _, state, _, _ in health), health
    assert all(since == 0 and not failing for _, _, since, failing in health), health
