"""The Go client of docs/backends.md (examples/go-client): stock grpc-go
1.33 from Debian, pointed at a pool through `lookaside dns` only, balances
its calls over the balancer's list with grpc-go's own grpclb policy and
sends each backend its lb-token. Skips without the Go toolchain, or fails
under LOOKASIDE_STRICT=1."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.dns_responder.dns_handle import ZONE, DnsHandle
from tests.examples.test_go_backend import build_go
from tests.interop.helpers import register, wait_dns_caught_up
from tests.support import BalancerHandle, RouteGuideBackend

CALLS = 60


@pytest.fixture(scope="module")
def go_client(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_go("go-client", tmp_path_factory.mktemp("go") / "go-client")


@pytest.fixture
def dns(redis_url: str, balancer: BalancerHandle) -> Iterator[DnsHandle]:
    handle = DnsHandle(redis_url, balancers=balancer.address)
    yield handle
    handle.stop()


def test_grpc_go_client_spreads_calls_with_each_backends_token(
    go_client: Path, balancer: BalancerHandle, dns: DnsHandle, pool_name: str
) -> None:
    three = [RouteGuideBackend(f"go-target-{i}").start() for i in range(3)]
    fallback = RouteGuideBackend("fallback").start()
    try:
        ids = [register(balancer, pool_name, b) for b in three]
        wait_dns_caught_up(dns, pool_name)
        target = f"dns://127.0.0.1:{dns.port}/{pool_name}.{ZONE}:{fallback.port}"
        run = subprocess.run(
            [str(go_client), "-target", target, "-n", str(CALLS)],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert run.returncode == 0, run.stdout + run.stderr
        names = run.stdout.split()
        assert len(names) == CALLS and set(names) == {b.name for b in three}, run.stdout
        epoch = balancer.server.epoch
        for b, backend_id in zip(three, ids, strict=True):
            assert set(b.tokens) == {f"{backend_id}.{epoch}"}
        assert fallback.calls == 0
    finally:
        for b in [*three, fallback]:
            b.stop()
