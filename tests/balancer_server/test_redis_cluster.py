"""The balancer, the DNS responder and the admin API on a real Redis Cluster
of three masters (`--redis-cluster`): backends register through the
balancer's registration API, a generated BalanceLoad stub gets the list
and then the change a second backend makes, load reports reach the
cluster, and the DNS responder and the admin API see the same pool."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import grpc
import httpx
import pytest
from dnslib import QTYPE

from admin_api.app import create_app
from balancer_server.settings import BalancerSettings
from dns_responder.settings import DnsSettings
from lookaside_proto.lb.v1 import load_balancer_pb2 as lb
from lookaside_proto.registry.v1 import registry_pb2 as pb
from lookaside_proto.registry.v1 import registry_pb2_grpc as pb_grpc
from lookaside_registry.model import PoolConfig
from lookaside_registry.store import RegistryStore
from tests.admin_api.conftest import AUTH, make_settings
from tests.dns_responder.dns_handle import ZONE, DnsHandle
from tests.support import BalancerHandle, LbStream, RouteGuideBackend, wait_until


@pytest.fixture
def cluster_balancer(redis_cluster_url: str) -> Iterator[BalancerHandle]:
    handle = BalancerHandle(redis_cluster_url, redis_cluster=True)
    yield handle
    handle.stop()


def test_the_setting_reads_its_environment_variable(
    monkeypatch: pytest.MonkeyPatch, redis_cluster_url: str
) -> None:
    monkeypatch.setenv("LOOKASIDE_BALANCER_REDIS_CLUSTER", "true")
    monkeypatch.setenv("LOOKASIDE_DNS_REDIS_CLUSTER", "1")
    assert BalancerSettings(redis_url=redis_cluster_url).redis_cluster
    assert DnsSettings(redis_url=redis_cluster_url).redis_cluster
    assert not BalancerSettings(redis_url=redis_cluster_url, redis_cluster=False).redis_cluster


def test_registration_lists_changes_and_load_reports_on_a_cluster(
    cluster_balancer: BalancerHandle, pool_name: str
) -> None:
    store = cluster_balancer.store
    assert store.redis.__class__.__name__ == "RedisCluster"
    cluster_balancer.run(store.put_pool(PoolConfig(name=pool_name, report_interval_ms=1000)))
    backends = [RouteGuideBackend().start() for _ in range(2)]
    channel = grpc.insecure_channel(cluster_balancer.address)
    registry = pb_grpc.RegistryStub(channel)
    stream = None
    try:
        first = registry.Register(
            pb.RegisterRequest(pool=pool_name, host="127.0.0.1", port=backends[0].port), timeout=10
        )
        assert first.address == f"127.0.0.1:{backends[0].port}"

        stream = LbStream(cluster_balancer.address, pool_name)
        listed = stream.next_list(timeout=20)
        assert [addr for addr, _, _ in listed] == [f"127.0.0.1:{backends[0].port}"]

        # A second backend: its change reaches the open stream.
        registry.Register(
            pb.RegisterRequest(pool=pool_name, host="127.0.0.1", port=backends[1].port), timeout=10
        )
        want = sorted(f"127.0.0.1:{b.port}" for b in backends)
        while True:
            listed = stream.next_list(timeout=20)
            if sorted(addr for addr, _, _ in listed) == want:
                break

        # A load report is flushed to the pool's keys on the cluster.
        stream.send(
            lb.LoadBalanceRequest(
                client_stats=lb.ClientStats(num_calls_started=7, num_calls_finished=7)
            )
        )

        def reported() -> bool:
            total = cluster_balancer.run(store.load_total(pool_name))
            return total.get("started", 0) == 7

        wait_until(reported, timeout=20, interval=0.2)

        # Heartbeats renew the lease on the cluster.
        beat = registry.Heartbeat(
            pb.HeartbeatRequest(
                pool=pool_name, backend_id=first.backend_id, lease_id=first.lease_id
            ),
            timeout=10,
        )
        assert beat is not None
    finally:
        if stream is not None:
            stream.close()
        channel.close()
        for b in backends:
            b.stop()


def test_dns_responder_and_admin_api_on_a_cluster(redis_cluster_url: str, pool_name: str) -> None:
    dns = DnsHandle(redis_cluster_url, redis_cluster=True, balancers="127.0.0.1:50051")
    try:
        store = dns.store
        assert store.redis.__class__.__name__ == "RedisCluster"
        dns.run(store.put_pool(PoolConfig(name=pool_name)))

        def answered() -> bool:
            reply = dns.query(f"_grpclb._tcp.{pool_name}.{ZONE}", "SRV")
            return any(r.rtype == QTYPE.SRV for r in reply.rr)

        wait_until(answered, timeout=20, interval=0.1)
    finally:
        dns.stop()

    async def admin() -> None:
        app = create_app(make_settings(redis_cluster_url, redis_cluster=True))
        assert isinstance(app.state.store, RegistryStore)
        transport = httpx.ASGITransport(app=app, client=("127.0.0.7", 40000))
        async with httpx.AsyncClient(transport=transport, base_url="http://admin.test") as c:
            listed = await c.get("/api/v1/pools", headers=AUTH)
            assert listed.status_code == 200, listed.text
            assert pool_name in listed.text
        await app.state.store.close()

    asyncio.run(admin())
