"""Changes made through the admin API reach a connected LookasideChannel:
the API writes Redis, the balancer follows Redis, the client follows the
balancer."""

from __future__ import annotations

import asyncio
from collections import Counter

import grpc
import httpx
import pytest

from client_lib.aio import LookasideChannel
from lookaside_proto.routeguide.v1 import route_guide_pb2 as rg
from lookaside_proto.routeguide.v1 import route_guide_pb2_grpc as rg_grpc
from tests.admin_api.conftest import AUTH
from tests.support import BalancerHandle, RouteGuideBackend

pytestmark = pytest.mark.asyncio(loop_scope="session")


async def until(predicate, limit: float = 10.0) -> None:  # type: ignore[no-untyped-def]
    async def poll() -> None:
        while not predicate():
            await asyncio.sleep(0.02)

    await asyncio.wait_for(poll(), limit)


def ready(channel: LookasideChannel) -> int:
    return sum(s is grpc.ChannelConnectivity.READY for s in channel.backend_states().values())


async def test_drain_and_weight_reach_the_thin_client(
    client: httpx.AsyncClient, balancer: BalancerHandle, pool: str
) -> None:
    backends = [RouteGuideBackend().start() for _ in range(3)]
    try:
        ids = {}
        for b in backends:
            r = await client.post(
                f"/api/v1/pools/{pool}/backends",
                json={"host": "127.0.0.1", "port": b.port},
                headers=AUTH,
            )
            assert r.status_code == 201, r.text
            ids[b.port] = r.json()["id"]
        async with LookasideChannel(pool, balancer.address) as channel:
            await until(lambda: len(channel.backends()) == 3 and ready(channel) == 3)
            stub = rg_grpc.RouteGuideStub(channel)

            drained = backends[0]
            r = await client.post(
                f"/api/v1/pools/{pool}/backends/{ids[drained.port]}/drain", headers=AUTH
            )
            assert r.status_code == 200, r.text
            await until(
                lambda: f"127.0.0.1:{drained.port}" not in {a for a, _ in channel.backends()}
            )
            before = drained.calls
            names = Counter([(await stub.GetFeature(rg.Point())).name for _ in range(40)])
            assert drained.calls == before
            assert names == {backends[1].name: 20, backends[2].name: 20}

            heavy = backends[1]
            r = await client.put(
                f"/api/v1/pools/{pool}/backends/{ids[heavy.port]}/weight",
                json={"weight": 3},
                headers=AUTH,
            )
            assert r.status_code == 200, r.text
            await until(lambda: len(channel.backends()) == 4 and ready(channel) == 2)
            names = Counter([(await stub.GetFeature(rg.Point())).name for _ in range(40)])
            assert names == {heavy.name: 30, backends[2].name: 10}
    finally:
        for b in backends:
            b.stop()
