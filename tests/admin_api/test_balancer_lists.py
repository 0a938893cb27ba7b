"""An admin action reaches the balancer through Redis alone: a drain takes
the backend out of the next server list on a live BalanceLoad stream, and a
weight of 3 makes it appear three times."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator

import grpc
import httpx
import pytest

from lookaside_proto.lb.v1 import load_balancer_pb2 as lb
from lookaside_proto.lb.v1 import load_balancer_pb2_grpc as lb_grpc
from tests.admin_api.conftest import AUTH
from tests.support import BalancerHandle

pytestmark = pytest.mark.asyncio

LIST_TIMEOUT = 10.0


class ListStream:
    """A stock grpc.aio BalanceLoad stream whose responses go to a queue."""

    def __init__(self, address: str, name: str) -> None:
        self.channel = grpc.aio.insecure_channel(address)
        self.requests: asyncio.Queue[lb.LoadBalanceRequest | None] = asyncio.Queue()
        self.responses: asyncio.Queue[lb.LoadBalanceResponse] = asyncio.Queue()
        self.requests.put_nowait(
            lb.LoadBalanceRequest(initial_request=lb.InitialLoadBalanceRequest(name=name))
        )
        self.call = lb_grpc.LoadBalancerStub(self.channel).BalanceLoad(self._send())
        self.reader = asyncio.create_task(self._read())

    async def _send(self) -> AsyncIterator[lb.LoadBalanceRequest]:
        while (request := await self.requests.get()) is not None:
            yield request

    async def _read(self) -> None:
        async for response in self.call:
            await self.responses.put(response)

    async def next_ports(self) -> Counter[int]:
        """The ports (with repetitions) of the next server list."""
        while True:
            response = await asyncio.wait_for(self.responses.get(), LIST_TIMEOUT)
            if response.HasField("server_list"):
                return Counter(s.port for s in response.server_list.servers if not s.drop)

    async def close(self) -> None:
        self.requests.put_nowait(None)
        self.call.cancel()
        self.reader.cancel()
        await asyncio.gather(self.reader, return_exceptions=True)
        await self.channel.close()


async def test_drain_and_weight_reach_the_stream(
    client: httpx.AsyncClient,
    pool: str,
    static_backend,
    balancer: BalancerHandle,  # type: ignore[no-untyped-def]
) -> None:
    a = await static_backend(pool, 9201)
    b = await static_backend(pool, 9202)
    base = f"/api/v1/pools/{pool}/backends"

    stream = ListStream(balancer.address, pool)
    try:
        first = await asyncio.wait_for(stream.responses.get(), LIST_TIMEOUT)
        assert first.HasField("initial_response")
        assert await stream.next_ports() == Counter({9201: 1, 9202: 1})

        r = await client.post(f"{base}/{a['id']}/drain", headers=AUTH)
        assert r.status_code == 200 and r.json()["state"] == "draining"
        assert await stream.next_ports() == Counter({9202: 1})

        r = await client.post(f"{base}/{a['id']}/undrain", headers=AUTH)
        assert r.status_code == 200
        assert await stream.next_ports() == Counter({9201: 1, 9202: 1})

        r = await client.put(f"{base}/{b['id']}/weight", json={"weight": 3}, headers=AUTH)
        assert r.status_code == 200
        assert await stream.next_ports() == Counter({9201: 1, 9202: 3})
    finally:
        await stream.close()
