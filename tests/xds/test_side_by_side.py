"""One pool served at once to the three kinds of client a fleet has while it
moves off grpclb: the thin grpclb client (client_lib), a stock grpcio
grpclb client (found through the DNS responder) and a stock grpcio xDS
client, all open together and all spreading over every backend, with
health checks and outlier detection on."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator

import grpc
import pytest

from balancer_server import metrics
from client_lib import LookasideChannel
from lookaside_proto.routeguide.v1 import route_guide_pb2 as rg
from lookaside_proto.routeguide.v1 import route_guide_pb2_grpc as rg_grpc
from lookaside_registry.model import PoolConfig
from tests.dns_responder.dns_handle import ZONE, DnsHandle
from tests.interop.helpers import GRPCLB_CONFIG, wait_dns_caught_up
from tests.support import (
    BalancerHandle,
    RouteGuideBackend,
    register_all,
    start_backends,
    wait_until,
)
from tests.xds.helpers import XdsClient, bootstrap

CALLS = 150


@pytest.fixture
def dns(redis_url: str, balancer: BalancerHandle) -> Iterator[DnsHandle]:
    handle = DnsHandle(redis_url, balancers=balancer.address)
    yield handle
    handle.stop()


def calls(stub: rg_grpc.RouteGuideStub, n: int) -> Counter[str]:
    seen: Counter[str] = Counter()
    for _ in range(n):
        try:
            seen[stub.GetFeature(rg.Point(latitude=1, longitude=2), timeout=5).name] += 1
        except grpc.RpcError as exc:
            seen[f"error:{exc.code().name}"] += 1
    return seen


def test_thin_grpclb_stock_grpclb_and_xds_clients_share_one_pool(
    balancer: BalancerHandle,
    dns: DnsHandle,
    backends: list[RouteGuideBackend],
    pool_name: str,
) -> None:
    balancer.run(
        balancer.store.put_pool(
            PoolConfig.from_flat(
                pool_name,
                health_checks=True,
                health_interval_ms=500,
                health_timeout_ms=2000,
                outlier_detection=True,
                outlier_interval_ms=1000,
            )
        )
    )
    three = start_backends(backends, 3)
    register_all(balancer, pool_name, three)
    names = {b.name for b in three}
    wait_dns_caught_up(dns, pool_name)
    thin = LookasideChannel(pool_name, balancer.address)
    stock = grpc.insecure_channel(
        f"dns://127.0.0.1:{dns.port}/{pool_name}.{ZONE}:{three[0].port}",
        options=[
            ("grpc.dns_enable_srv_queries", 1),
            ("grpc.service_config", GRPCLB_CONFIG),
            ("grpc.grpclb_fallback_timeout_ms", 30_000),
        ],
    )
    xds = XdsClient(pool_name, bootstrap(balancer.address, node_id="side-by-side"))
    try:
        grpc.channel_ready_future(thin).result(timeout=20)
        grpc.channel_ready_future(stock).result(timeout=20)
        stubs = {"thin": rg_grpc.RouteGuideStub(thin), "stock": rg_grpc.RouteGuideStub(stock)}
        seen: dict[str, Counter[str]] = {k: Counter() for k in ("thin", "stock", "xds")}

        def all_reach_all() -> bool:
            for kind, stub in stubs.items():
                seen[kind].update(calls(stub, 6))
            seen["xds"].update(xds.calls(6, timeout=10))
            return all(names <= set(c) for c in seen.values())

        wait_until(all_reach_all, timeout=30, interval=0)
        # All three at once: two grpclb streams and an xDS stream on one balancer.
        assert metrics.STREAMS_OPEN.labels(pool_name)._value.get() == 2
        assert [s["node_id"] for s in balancer.server.xds_streams.snapshot()] == ["side-by-side"]
        results = {kind: calls(stub, CALLS) for kind, stub in stubs.items()}
        results["xds"] = xds.calls(CALLS)
        print({k: dict(v) for k, v in results.items()})
        for kind, got in results.items():
            assert set(got) == names, (kind, got)
            # Round robin over the three: a third each, give or take what
            # a backend's connection or health may shift.
            assert max(got.values()) <= CALLS * 0.5, (kind, got)
        assert results["xds"] == Counter({b.name: CALLS // 3 for b in three})
    finally:
        xds.close()
        stock.close()
        thin.close()
