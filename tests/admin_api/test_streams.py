"""The admin API shows xDS beside grpclb: /api/v1/streams lists a real
balancer's grpclb streams per pool and its xDS streams with their last
ACKed and NACKed versions, and a pool's load splits what grpclb ClientStats
and LRS reports said. Real balancer, real Redis, stock grpcio stubs."""

from __future__ import annotations

import asyncio
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
