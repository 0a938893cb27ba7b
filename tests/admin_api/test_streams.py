"""The admin API shows xDS beside grpclb: /api/v1/streams lists a real
balancer's grpclb streams per pool and its xDS streams with their last
ACKed and NACKed versions, and a pool's load splits what grpclb ClientStats
and LRS reports said. Real balancer, real Redis, stock grpcio stubs."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from lookaside_proto.lb.v1 import load_balancer_pb2 as lb
from lookaside_registry.model import PoolConfig
from tests.admin_api.conftest import AUTH
from tests.balancer_server.test_lrs import LrsStream, cluster
from tests.support import BalancerHandle, LbStream

pytestmark = pytest.mark.asyncio

EDS = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment"


@pytest.fixture
def balancer(redis_url: str) -> Iterator[BalancerHandle]:
    handle = BalancerHandle(redis_url)
    yield handle
    handle.stop()


async def until(check: Any, timeout: float = 30.0) -> Any:
    """Polls an async check until it returns something true."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = await check()
        if got:
            return got
        await asyncio.sleep(0.05)
    raise AssertionError(f"condition not met within {timeout}s")


async def test_streams_show_grpclb_and_xds_side_by_side(
    client: httpx.AsyncClient, balancer: BalancerHandle, pool_name: str
) -> None:
    balancer.run(balancer.store.put_pool(PoolConfig(name=pool_name)))
    balancer.run(
        balancer.store.register(pool=pool_name, host="127.0.0.1", ip="127.0.0.1", port=7201)
    )
    grpclb = LbStream(balancer.address, pool_name)
    table = balancer.server.xds_streams

    async def ads_events() -> None:  # as the ADS service reports them, on its loop
        table.opened("s-1", "ipv4:127.0.0.1:5555", "node-xds-1")
        table.acked("s-1", EDS, "3")
        table.nacked("s-1", EDS, "3", "endpoint load_balancing_weight 0 is not allowed")

    try:
        grpclb.next_list()
        balancer.run(ads_events())
        replica = balancer.server.replica_id

        async def both() -> Any:
            body = (await client.get("/api/v1/streams", headers=AUTH)).json()
            mine = [r for r in body["xds"]["replicas"] if r["replica"] == replica]
            pools = {p["pool"]: p for p in body["grpclb"]["pools"]}
            return body if mine and mine[0]["streams_total"] == 1 and pool_name in pools else None

        body = await until(both)
    finally:
        grpclb.close()
    pools = {p["pool"]: p for p in body["grpclb"]["pools"]}
    assert pools[pool_name]["streams_total"] == 1
    assert pools[pool_name]["replicas"] == {replica: 1}
    stream = next(r for r in body["xds"]["replicas"] if r["replica"] == replica)["streams"][0]
    assert (stream["stream_id"], stream["node_id"]) == ("s-1", "node-xds-1")
    (eds,) = stream["types"]
    assert eds["type_url"] == EDS
    assert (eds["acked_version"], eds["nacked_version"]) == ("3", "3")
    assert "load_balancing_weight 0" in eds["nack_error"]
    assert body["xds"]["nacking"] >= 1


async def test_pool_load_splits_grpclb_and_xds_reports(
    client: httpx.AsyncClient, balancer: BalancerHandle, pool_name: str
) -> None:
    balancer.run(balancer.store.put_pool(PoolConfig(name=pool_name, report_interval_ms=1000)))
    balancer.run(
        balancer.store.register(pool=pool_name, host="127.0.0.1", ip="127.0.0.1", port=7202)
    )
    grpclb = LbStream(balancer.address, pool_name)
    lrs = LrsStream(balancer.address)
    try:
        grpclb.next_list()
        lrs.next()
        grpclb.send(
            lb.LoadBalanceRequest(
                client_stats=lb.ClientStats(num_calls_started=6, num_calls_finished=6)
            )
        )
        lrs.send(cluster(pool_name, issued=9, ok=8, failed=1))

        async def split() -> Any:
            body = (await client.get(f"/api/v1/pools/{pool_name}/load", headers=AUTH)).json()
            window = next(w for w in body["windows"] if w["window"] == "1m")
            return window if window["counts"]["finished"] == 15 else None

        window = await until(split)
    finally:
        grpclb.close()
        lrs.close()
    assert window["sources"]["grpclb"]["finished"] == 6
    assert window["sources"]["xds"]["finished"] == 9
    assert window["sources"]["xds"]["known_received"] == 8
    assert window["sources"]["xds"]["reports"] == 1


async def test_streams_of_thousands_of_pools_are_read_in_a_few_round_trips(
    client: httpx.AsyncClient, redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    import redis
    import redis.asyncio as aioredis

    from lookaside_registry import keys

    direct = redis.Redis.from_url(redis_url, decode_responses=True)
    names = [f"many-streams-{i}" for i in range(3000)]
    now_ms = int(time.time() * 1000)
    trips = 0
    single = aioredis.Redis.execute_command
    batch = aioredis.client.Pipeline.execute

    async def counted_single(self: Any, *args: Any, **kw: Any) -> Any:
        nonlocal trips
        trips += 1
        return await single(self, *args, **kw)

    async def counted_batch(self: Any, *args: Any, **kw: Any) -> Any:
        nonlocal trips
        trips += 1
        return await batch(self, *args, **kw)

    try:
        direct.sadd(keys.POOLS, *names)
        direct.hset(keys.streams(names[-1]), "r-1", json.dumps({"streams": 4, "ts_ms": now_ms}))
        monkeypatch.setattr(aioredis.Redis, "execute_command", counted_single)
        monkeypatch.setattr(aioredis.client.Pipeline, "execute", counted_batch)
        response = await client.get("/api/v1/streams", headers=AUTH)
        monkeypatch.undo()
    finally:
        direct.srem(keys.POOLS, *names)
        direct.delete(keys.streams(names[-1]))
        direct.close()
    assert response.status_code == 200
    pools = {p["pool"]: p["streams_total"] for p in response.json()["grpclb"]["pools"]}
    assert pools.get(names[-1]) == 4
    assert trips <= 20, trips  # was one round trip per pool
