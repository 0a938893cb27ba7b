"""The TXT record _grpc_config.<pool>.<zone> selects grpclb for a stock
client that has no service config of its own."""

from __future__ import annotations

from collections.abc import Callable

import grpc

from lookaside_proto.routeguide.v1 import route_guide_pb2_grpc as rg_grpc
from tests.dns_responder.dns_handle import DnsHandle
from tests.interop.helpers import Backend, calls_until, get_feature, register
from tests.support import BalancerHandle


def test_txt_record_selects_grpclb(
    balancer: BalancerHandle,
    dns: DnsHandle,
    pool_name: str,
    backends: Callable[..., list[Backend]],
    fallback_backend: Backend,
    stock_channel: Callable[..., grpc.Channel],
) -> None:
    two = backends(2)
    ids = [register(balancer, pool_name, b) for b in two]
    channel = stock_channel(
        dns,
        pool_name,
        fallback_backend.port,
        service_config=None,
        service_config_disable_resolution=0,
    )
    stub = rg_grpc.RouteGuideStub(channel)
    calls_until(stub, lambda: all(b.calls for b in two), timeout=10)
    assert all(get_feature(stub)[0] == grpc.StatusCode.OK for _ in range(20))
    epoch = balancer.server.epoch
    for b, backend_id in zip(two, ids, strict=True):
        assert set(b.tokens) == {f"{backend_id}.{epoch}"}
    assert fallback_backend.calls == 0


def test_without_txt_or_service_config_the_srv_record_is_ignored(
    balancer: BalancerHandle,
    dns_factory: Callable[..., DnsHandle],
    pool_name: str,
    backends: Callable[..., list[Backend]],
    fallback_backend: Backend,
    stock_channel: Callable[..., grpc.Channel],
) -> None:
    """The control for the test above: the same client against a responder
    that publishes no TXT uses the A records with pick_first."""
    dns = dns_factory(balancer, service_config="")
    (listed,) = backends(1)
    register(balancer, pool_name, listed)
    channel = stock_channel(
        dns,
        pool_name,
        fallback_backend.port,
        service_config=None,
        service_config_disable_resolution=0,
    )
    stub = rg_grpc.RouteGuideStub(channel)
    assert all(get_feature(stub)[0] == grpc.StatusCode.OK for _ in range(20))
    assert fallback_backend.calls == 20
    assert set(fallback_backend.tokens) == {""}
    assert listed.calls == 0
