"""Limits on the balancer's port: streams per client address, a maximum
stream age, keepalive enforcement. Each refusal has its status and metric."""

from __future__ import annotations

import queue

import grpc
import pytest

from balancer_server import metrics
from balancer_server.limits import StreamsPerAddress, client_network
from tests.support import STOP, BalancerHandle, LbStream, wait_until


def limit_refusals(limit: str) -> float:
    value = metrics.REGISTRY.get_sample_value(
        "lookaside_balancer_limit_refusals_total", {"limit": limit}
    )
    return value or 0.0


def test_streams_per_client_address_are_limited(redis_url: str, pool_name: str) -> None:
    balancer = BalancerHandle(redis_url, max_streams_per_address=3)
    streams: list[LbStream] = []
    try:
        for _ in range(3):
            streams.append(LbStream(balancer.address, pool_name))
            assert streams[-1].next().HasField("initial_response")
        before = limit_refusals("streams_per_address")
        extra = LbStream(balancer.address, pool_name)
        with pytest.raises(grpc.RpcError) as info:
            extra.next()
        assert info.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "at most 3" in info.value.details()
        assert limit_refusals("streams_per_address") == before + 1
        extra.close()
        streams.pop().close()
        # The slot is free again once the server has seen the stream end.
        wait_until(lambda: sum(balancer.server.balance_load.per_address.open.values()) < 3)
        again = LbStream(balancer.address, pool_name)
        assert again.next().HasField("initial_response")
        again.close()
    finally:
        for s in streams:
            s.close()
        balancer.stop()


@pytest.mark.parametrize(
    ("peer", "network"),
    [
        ("ipv4:127.0.0.1:5000", "127.0.0.1"),
        ("ipv6:[::ffff:127.0.0.2]:5000", "127.0.0.2"),
        ("ipv6:%5B::ffff:7f00:2%5D:5000", "127.0.0.2"),
        ("ipv6:%5B2001:db8:1:2::1%5D:5000", "2001:db8:1:2::/64"),
        ("ipv6:[2001:db8:1:2:ffff:ffff:ffff:ffff]:5000", "2001:db8:1:2::/64"),
        ("ipv6:[2001:db8:1:3::1]:5000", "2001:db8:1:3::/64"),
        ("ipv6:[fe80::1%25eth0]:5000", "fe80::/64"),
        ("unix:/tmp/s", "unix"),
    ],
)
def test_client_networks(peer: str, network: str) -> None:
    assert client_network(peer) == network


def test_a_whole_ipv6_64_and_mapped_ipv4_count_as_one_client() -> None:
    # What the servicer does with each stream's peer: 2^64 addresses of one
    # /64 are one client, and so are 127.0.0.2 and ::ffff:127.0.0.2.
    limit = StreamsPerAddress(3)
    taken = [f"ipv6:%5B2001:db8:0:7::{i:x}%5D:{40000 + i}" for i in range(1, 4)]
    assert all(limit.acquire(client_network(p)) for p in taken)
    assert not limit.acquire(client_network("ipv6:[2001:db8:0:7:dead:beef::1]:1"))
    assert limit.acquire(client_network("ipv6:[2001:db8:0:8::1]:1"))
    assert limit.acquire(client_network("ipv4:127.0.0.2:1"))
    assert limit.acquire(client_network("ipv6:[::ffff:127.0.0.2]:2"))
    assert limit.acquire(client_network("ipv4:127.0.0.2:3"))
    assert not limit.acquire(client_network("ipv6:[::ffff:127.0.0.2]:4"))


def test_streams_over_ipv4_and_ipv4_mapped_share_the_limit(redis_url: str, pool_name: str) -> None:
    # A dual-stack listener: the same client through 127.0.0.1 and through
    # ::ffff:127.0.0.1 is one client.
    balancer = BalancerHandle(redis_url, listen="[::]:0", max_streams_per_address=2)
    port = balancer.port
    streams = [
        LbStream(f"127.0.0.1:{port}", pool_name),
        LbStream(f"[::ffff:127.0.0.1]:{port}", pool_name),
    ]
    try:
        for stream in streams:
            assert stream.next().HasField("initial_response")
        extra = LbStream(f"[::ffff:127.0.0.1]:{port}", pool_name)
        with pytest.raises(grpc.RpcError) as info:
            extra.next()
        assert info.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "from 127.0.0.1" in info.value.details()
        extra.close()
    finally:
        for s in streams:
            s.close()
        balancer.stop()


def test_streams_end_after_the_maximum_age(redis_url: str, pool_name: str) -> None:
    balancer = BalancerHandle(redis_url, max_stream_age=1.0, max_stream_age_grace=1.0)
    try:
        stream = LbStream(balancer.address, pool_name)
        assert stream.next().HasField("initial_response")
        with pytest.raises(grpc.RpcError) as info:
            while True:
                stream.next(timeout=20)
        assert info.value.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED)
        stream.close()
    finally:
        balancer.stop()


def test_a_client_that_pings_too_often_is_sent_away(
    balancer: BalancerHandle, pool_name: str
) -> None:
    from lookaside_proto.lb.v1 import load_balancer_pb2 as lb
    from lookaside_proto.lb.v1 import load_balancer_pb2_grpc as lb_grpc

    options = [
        ("grpc.keepalive_time_ms", 200),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.max_pings_without_data", 0),
    ]
    requests: queue.Queue[object] = queue.Queue()
    requests.put(
        lb.LoadBalanceRequest(initial_request=lb.InitialLoadBalanceRequest(name=pool_name))
    )
    with grpc.insecure_channel(balancer.address, options=options) as channel:
        call = lb_grpc.LoadBalancerStub(channel).BalanceLoad(iter(requests.get, STOP), timeout=30)
        with pytest.raises(grpc.RpcError) as info:
            for _ in call:
                pass
        requests.put(STOP)
        # GOAWAY (too_many_pings) well before the deadline.
        assert info.value.code() is grpc.StatusCode.UNAVAILABLE
