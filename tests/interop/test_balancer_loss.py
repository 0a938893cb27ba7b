"""A stock grpcio client when its balancer goes away and comes back."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import grpc
import pytest

from lookaside_proto.routeguide.v1 import route_guide_pb2_grpc as rg_grpc
from lookaside_registry.model import PoolConfig
from tests.dns_responder.dns_handle import DnsHandle
from tests.interop.helpers import Backend, calls_until, get_feature, register
from tests.support import BalancerHandle


@pytest.fixture
def replacements(redis_url: str) -> Iterator[list[BalancerHandle]]:
    """Balancers a test starts itself; stopped afterwards."""
    started: list[BalancerHandle] = []
    yield started
    for handle in started:
        handle.stop()


def test_a_stopped_balancer_does_not_break_calls_to_healthy_backends(
    balancer: BalancerHandle,
    dns: DnsHandle,
    pool_name: str,
    backends: Callable[..., list[Backend]],
    fallback_backend: Backend,
    stock_channel: Callable[..., grpc.Channel],
) -> None:
    balancer.run(balancer.store.put_pool(PoolConfig(name=pool_name, report_interval_ms=1000)))
    three = backends(3)
    ids = [register(balancer, pool_name, b) for b in three]
    stub = rg_grpc.RouteGuideStub(stock_channel(dns, pool_name, fallback_backend.port))
    calls_until(stub, lambda: all(b.calls for b in three), timeout=10)
    epoch = balancer.server.epoch
    balancer.stop()
    for b in three:
        b.reset()
    # The client keeps its last list: every call works and goes to the
    # listed backends, with their tokens, not to the DNS fallback.
    results = [get_feature(stub) for _ in range(150)]
    assert all(code == grpc.StatusCode.OK for code, _ in results)
    assert fallback_backend.calls == 0
    for b, backend_id in zip(three, ids, strict=True):
        assert b.calls > 0
        assert set(b.tokens) == {f"{backend_id}.{epoch}"}
    assert sum(b.calls for b in three) == 150


def test_a_restarted_balancer_takes_the_client_out_of_fallback(
    balancer: BalancerHandle,
    redis_url: str,
    dns: DnsHandle,
    pool_name: str,
    backends: Callable[..., list[Backend]],
    fallback_backend: Backend,
    stock_channel: Callable[..., grpc.Channel],
    replacements: list[BalancerHandle],
) -> None:
    """Trap 2 of GRPCLB_NOTES.md: after a fallback, C-core ignores a list
    identical to its last one. The restarted balancer serves the very same
    backends at the same addresses, so only the epoch in the tokens makes
    its list differ; the client must leave fallback and use it."""
    balancer.run(balancer.store.put_pool(PoolConfig(name=pool_name, report_interval_ms=1000)))
    three = backends(3)
    ports = [b.port for b in three]
    ids = [register(balancer, pool_name, b) for b in three]
    stub = rg_grpc.RouteGuideStub(stock_channel(dns, pool_name, fallback_backend.port))
    calls_until(stub, lambda: all(b.calls for b in three), timeout=10)
    assert fallback_backend.calls == 0
    old_epoch = balancer.server.epoch

    # Lose the balancer and every listed backend: the client falls back to
    # the pool's A records (127.0.0.1 at the target's port).
    balancer.stop()
    for b in three:
        b.stop()
    calls_until(stub, lambda: fallback_backend.calls >= 5, timeout=10)
    assert set(fallback_backend.tokens) == {""}  # fallback calls carry no token

    # The same backends come back at the same addresses (still registered),
    # and a new balancer process on the same port.
    again = backends(3, prefix="again", ports=ports)
    replacement = BalancerHandle(redis_url, listen=f"127.0.0.1:{balancer.port}")
    replacements.append(replacement)
    assert replacement.port == balancer.port
    new_epoch = replacement.server.epoch
    assert new_epoch != old_epoch

    calls_until(stub, lambda: sum(b.calls for b in again) >= 10, timeout=20)
    for b in again:
        b.reset()
    fallback_before = fallback_backend.calls
    results = [get_feature(stub) for _ in range(60)]
    assert all(code == grpc.StatusCode.OK for code, _ in results)
    assert fallback_backend.calls == fallback_before
    assert sum(b.calls for b in again) == 60
    for b, backend_id in zip(again, ids, strict=True):
        assert set(b.tokens) <= {f"{backend_id}.{new_epoch}"}
