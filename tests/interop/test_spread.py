"""A stock grpcio client, pointed at the pool through DNS only, spreads its
calls over the balancer's list and sends each backend its lb-token."""

from __future__ import annotations

from collections.abc import Callable

import grpc

from lookaside.redis_process import free_port
from lookaside_proto.routeguide.v1 import route_guide_pb2_grpc as rg_grpc
from lookaside_registry.machine import Event
from lookaside_registry.model import PoolConfig
from tests.dns_responder.dns_handle import ZONE, DnsHandle
from tests.interop.helpers import (
    Backend,
    calls_until,
    get_feature,
    register,
    wait_dns_caught_up,
)
from tests.support import BalancerHandle, wait_until


def test_calls_spread_evenly_with_each_backends_token(
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
    # Until every backend has answered once, the picker grows as connections
    # become ready; after that the round robin is stable.
    calls_until(stub, lambda: all(b.calls for b in three), timeout=10)
    for b in three:
        b.reset()
    results = [get_feature(stub) for _ in range(300)]
    assert all(code == grpc.StatusCode.OK for code, _ in results)
    assert [b.calls for b in three] == [100, 100, 100]
    epoch = balancer.server.epoch
    for b, backend_id in zip(three, ids, strict=True):
        assert dict(b.tokens) == {f"{backend_id}.{epoch}": 100}
    assert fallback_backend.calls == 0


def test_a_backend_that_registers_later_receives_calls(
    balancer: BalancerHandle,
    dns: DnsHandle,
    pool_name: str,
    backends: Callable[..., list[Backend]],
    fallback_backend: Backend,
    stock_channel: Callable[..., grpc.Channel],
) -> None:
    first, late = backends(2)
    register(balancer, pool_name, first)
    stub = rg_grpc.RouteGuideStub(stock_channel(dns, pool_name, fallback_backend.port))
    calls_until(stub, lambda: first.calls >= 5, timeout=10)
    assert late.calls == 0
    late_id = register(balancer, pool_name, late)
    calls_until(stub, lambda: late.calls >= 5, timeout=10)
    assert set(late.tokens) == {f"{late_id}.{balancer.server.epoch}"}
    assert fallback_backend.calls == 0


def test_a_backend_that_leaves_stops_receiving_calls(
    balancer: BalancerHandle,
    dns: DnsHandle,
    pool_name: str,
    backends: Callable[..., list[Backend]],
    fallback_backend: Backend,
    stock_channel: Callable[..., grpc.Channel],
) -> None:
    staying, leaving = backends(2)
    register(balancer, pool_name, staying)
    leaving_id = register(balancer, pool_name, leaving)
    stub = rg_grpc.RouteGuideStub(stock_channel(dns, pool_name, fallback_backend.port))
    calls_until(stub, lambda: staying.calls and leaving.calls, timeout=10)
    balancer.run(balancer.store.operate(pool_name, leaving_id, Event.OPERATOR_DRAIN, actor="test"))

    def only_staying() -> bool:
        mark = leaving.calls
        for _ in range(10):
            assert get_feature(stub)[0] == grpc.StatusCode.OK
        return leaving.calls == mark

    # The draining backend still runs: only the new list keeps calls off it.
    wait_until(only_staying, timeout=10)
    leaving.reset()
    staying.reset()
    assert all(get_feature(stub)[0] == grpc.StatusCode.OK for _ in range(50))
    assert (staying.calls, leaving.calls, fallback_backend.calls) == (50, 0, 0)


def test_a_dead_first_balancer_is_skipped(
    balancer: BalancerHandle,
    dns_factory: Callable[..., DnsHandle],
    pool_name: str,
    backends: Callable[..., list[Backend]],
    fallback_backend: Backend,
    stock_channel: Callable[..., grpc.Channel],
) -> None:
    """Two SRV targets, the first with nothing listening: the client uses
    the second one and gets its list (not the DNS fallback)."""
    dead = free_port()
    dns = dns_factory(balancer, balancers=f"127.0.0.2:{dead},{balancer.address}")
    (listed,) = backends(1)
    backend_id = register(balancer, pool_name, listed)
    wait_dns_caught_up(dns, pool_name)
    srv = dns.query(f"_grpclb._tcp.{pool_name}.{ZONE}", "SRV")
    assert [r.rdata.port for r in srv.rr] == [dead, balancer.port]
    stub = rg_grpc.RouteGuideStub(stock_channel(dns, pool_name, fallback_backend.port))
    calls_until(stub, lambda: listed.calls >= 10, timeout=10)
    assert set(listed.tokens) == {f"{backend_id}.{balancer.server.epoch}"}
    assert fallback_backend.calls == 0
