"""The asyncio LookasideChannel and AsyncRegistration."""

from __future__ import annotations

import asyncio

import grpc
import pytest

from client_lib import AsyncRegistration
from client_lib.aio import LookasideChannel
from lookaside_proto.routeguide.v1 import route_guide_pb2 as rg
from lookaside_proto.routeguide.v1 import route_guide_pb2_grpc as rg_grpc
from lookaside_registry import keys
from lookaside_registry.model import DropRate, PoolConfig
from tests.support import BalancerHandle, register_all, start_backends

pytestmark = pytest.mark.asyncio(loop_scope="session")


async def eventually(predicate, timeout: float = 30.0) -> None:  # type: ignore[no-untyped-def]
    async def poll() -> None:
        while not predicate():
            await asyncio.sleep(0.02)

    await asyncio.wait_for(poll(), timeout)


def ready(channel: LookasideChannel) -> int:
    return sum(s is grpc.ChannelConnectivity.READY for s in channel.backend_states().values())


async def test_aio_spread_tokens_and_streams(
    balancer: BalancerHandle, backends, pool_name: str
) -> None:  # type: ignore[no-untyped-def]
    three = start_backends(backends, 3)
    ids = register_all(balancer, pool_name, three)
    async with LookasideChannel(pool_name, balancer.address) as channel:
        await asyncio.wait_for(channel.channel_ready(), 10)
        await eventually(lambda: ready(channel) == 3)
        stub = rg_grpc.RouteGuideStub(channel)
        names = [(await stub.GetFeature(rg.Point())).name for _ in range(300)]
        features = [f.name async for f in stub.ListFeatures(rg.Rectangle())]
        assert len(features) == 3
        summary = await stub.RecordRoute(iter([rg.Point()] * 2))
        assert summary.point_count == 2
    for b in three:
        assert names.count(b.name) == 100
        assert b.tokens[f"{ids[b.port]}.{balancer.server.epoch}"] >= 100


async def test_aio_drops_and_stats(
    balancer: BalancerHandle, backends, pool_name: str, redis_client
) -> None:  # type: ignore[no-untyped-def]
    (b,) = start_backends(backends, 1)
    register_all(balancer, pool_name, [b])
    balancer.run(
        balancer.store.put_pool(
            PoolConfig(name=pool_name, report_interval_ms=1000, drops=(DropRate("load_shed", 500),))
        )
    )
    async with LookasideChannel(pool_name, balancer.address) as channel:
        await eventually(lambda: any(not a for a, _ in channel.backends()) and ready(channel) == 1)
        stub = rg_grpc.RouteGuideStub(channel)
        errors = 0
        for _ in range(40):
            try:
                await stub.GetFeature(rg.Point())
            except grpc.aio.AioRpcError as exc:
                assert exc.code() is grpc.StatusCode.UNAVAILABLE
                assert exc.details() == "drop directed by grpclb balancer"
                errors += 1
        assert errors == 20
        total = keys.load_total(pool_name)
        await eventually(lambda: redis_client.hget(total, "started") == "40", timeout=15)
    stats = redis_client.hgetall(total)
    assert stats["drop:load_shed"] == "20"
    assert stats["known_received"] == "20"


async def test_async_registration(
    balancer: BalancerHandle, backends, pool_name: str, redis_client
) -> None:  # type: ignore[no-untyped-def]
    (b,) = start_backends(backends, 1)
    async with AsyncRegistration(
        balancer.address, pool_name, b.port, host="127.0.0.1", lease_ttl=1.0
    ) as registration:
        field = keys.backends(pool_name)
        assert redis_client.hget(field, registration.backend_id) is not None
        first = redis_client.hget(field, registration.backend_id)
        await eventually(
            lambda: redis_client.hget(field, registration.backend_id) != first, timeout=5
        )
        redis_client.hdel(field, registration.backend_id)
        await eventually(lambda: registration.registrations == 2, timeout=5)
    assert redis_client.hget(field, registration.backend_id) is None


async def test_aio_reports_outcomes_per_backend(
    balancer: BalancerHandle, backends, pool_name: str, redis_client
) -> None:  # type: ignore[no-untyped-def]
    fine, sick = start_backends(backends, 2)
    ids = register_all(balancer, pool_name, [fine, sick])
    # Judging off and an hour between takes, so the counts stay in Redis
    # for the test to read.
    config = PoolConfig.from_flat(
        pool_name,
        report_interval_ms=1000,
        outlier_detection=False,
        outlier_interval_ms=3_600_000,
    )
    balancer.run(balancer.store.put_pool(config))
    sick.hang.set()
    async with LookasideChannel(pool_name, balancer.address) as channel:
        await eventually(lambda: ready(channel) == 2)
        stub = rg_grpc.RouteGuideStub(channel)
        codes = []
        for _ in range(10):
            try:
                # A deadline the fine backend meets on a loaded machine too.
                await stub.GetFeature(rg.Point(), timeout=1.0)
                codes.append(grpc.StatusCode.OK)
            except grpc.aio.AioRpcError as exc:
                codes.append(exc.code())
        assert sorted(c.name for c in set(codes)) == ["DEADLINE_EXCEEDED", "OK"]
        outcomes = keys.outcomes(pool_name)
        await eventually(lambda: redis_client.hget(outcomes, f"{ids[sick.port]}:f") == "5")
        await eventually(lambda: redis_client.hget(outcomes, f"{ids[fine.port]}:f") == "5")
    counts = redis_client.hgetall(outcomes)
    assert counts[f"{ids[fine.port]}:r"] == "5"
    assert counts.get(f"{ids[sick.port]}:r", "0") == "0"
