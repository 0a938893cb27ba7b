"""The xDS stream table: what each open ADS stream last ACKed and NACKed,
bounded whatever the client sends, and published by a real balancer to
Redis for the admin API (and removed when the balancer stops)."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from balancer_server.xds_streams import MAX_ERROR, MAX_TEXT, MAX_TYPES, XdsStreamTable
from lookaside_registry.store import RegistryStore
from tests.support import BalancerHandle, wait_until

LDS = "type.googleapis.com/envoy.config.listener.v3.Listener"
EDS = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment"


class Clock:
    def __init__(self) -> None:
        self.now = 1_000.0

    def __call__(self) -> float:
        self.now += 1.0
        return self.now


def test_each_stream_keeps_its_last_ack_and_nack_per_type() -> None:
    table = XdsStreamTable(Clock())
    table.opened("s1", "ipv4:127.0.0.1:5000", "node-a")
    table.opened("s2", "ipv4:127.0.0.1:5001", "node-b")
    table.acked("s1", LDS, "1")
    table.acked("s1", LDS, "2")
    table.nacked("s1", EDS, "", "ClusterLoadAssignment pool: load_balancing_weight 0")
    table.acked("s1", EDS, "3")
    rows = table.snapshot()
    assert [r["stream_id"] for r in rows] == ["s1", "s2"]  # oldest first
    s1 = rows[0]
    assert (s1["peer"], s1["node_id"]) == ("ipv4:127.0.0.1:5000", "node-a")
    assert s1["types"][LDS]["acked_version"] == "2" and s1["types"][LDS]["acks"] == 2
    assert s1["types"][LDS]["nacked_version"] is None
    eds = s1["types"][EDS]
    assert (eds["acked_version"], eds["nacked_version"], eds["nacks"]) == ("3", "", 1)
    assert not eds["nacking"]  # an ACK came after the NACK
    assert "load_balancing_weight 0" in eds["nack_error"]
    assert s1["acked"] == {LDS: "2", EDS: "3"}
    assert s1["nacked"] == {EDS: {"version": "", "error": eds["nack_error"]}}
    assert rows[1]["types"] == {} and rows[1]["acked"] == rows[1]["nacked"] == {}
    # NACKed streams are published first.
    assert [r["stream_id"] for r in table.published()] == ["s1", "s2"]
    table.nacked("s2", LDS, "", "bad")
    assert table.snapshot()[1]["types"][LDS]["nacking"]
    assert [r["stream_id"] for r in table.published(1)] == ["s2"]
    table.closed("s1")
    table.closed("s1")
    assert [r["stream_id"] for r in table.snapshot()] == ["s2"]


def test_calls_about_streams_not_open_change_nothing() -> None:
    table = XdsStreamTable()
    table.acked("never", LDS, "1")
    table.nacked("never", LDS, "1", "x")
    table.closed("never")
    assert table.snapshot() == [] and table.generation == 0


def test_what_a_client_sends_is_cut_to_bounded_sizes() -> None:
    table = XdsStreamTable()
    table.opened("s", "p" * 10_000, "n" * 10_000)
    for i in range(MAX_TYPES + 10):
        table.acked("s", f"type-{i}", "v" * 10_000)
    table.nacked("s", "type-0", "1", "e" * 100_000)
    row = table.snapshot()[0]
    assert len(row["peer"]) == MAX_TEXT and len(row["node_id"]) == MAX_TEXT
    assert len(row["types"]) == MAX_TYPES
    assert all(len(t["acked_version"]) == MAX_TEXT for t in row["types"].values())
    assert len(row["types"]["type-0"]["nack_error"]) == MAX_ERROR


def test_a_balancer_publishes_its_streams_and_removes_them_at_stop(redis_url: str) -> None:
    handle = BalancerHandle(redis_url)
    replica = handle.server.replica_id
    table = handle.server.xds_streams

    def published() -> list[Any]:
        rows = handle.run(handle.store.xds_streams())
        return [r for r in rows if r.replica == replica]

    try:
        # The table belongs to the balancer's loop: changed there.
        async def change() -> None:
            table.opened("7", "ipv4:127.0.0.1:6000", "node-x")
            table.nacked("7", EDS, "4", "endpoint weight 0")

        handle.run(change())
        wait_until(lambda: bool(published()) and published()[0].total == 1)
        row = published()[0].streams[0]
        assert row["node_id"] == "node-x"
        assert row["types"][EDS]["nack_error"] == "endpoint weight 0"

        async def close() -> None:
            table.closed("7")

        handle.run(close())
        wait_until(lambda: published()[0].total == 0)
    finally:
        handle.stop()
    store = RegistryStore.from_url(redis_url)

    async def read() -> list[str]:
        try:
            return [r.replica for r in await store.xds_streams()]
        finally:
            await store.close()

    assert replica not in asyncio.run(read())


def test_entries_of_replicas_long_gone_are_removed_by_the_next_write(
    redis_url: str, redis_client: Any
) -> None:
    from lookaside_registry import keys, xds

    gone_ms = int(time.time() * 1000) - xds.FORGET_MS - 1000
    stale_ms = int(time.time() * 1000) - xds.STALE_MS - 1000
    redis_client.hset(keys.XDS_STREAMS, "replica-gone", xds.entry(2, [], gone_ms))
    redis_client.hset(keys.XDS_STREAMS, "replica-stale", xds.entry(1, [], stale_ms))
    redis_client.hset(keys.XDS_STREAMS, "replica-garbage", "not json")
    store = RegistryStore.from_url(redis_url)

    async def write_and_read() -> list[str]:
        try:
            await store.set_xds_streams("replica-now", [], 0)
            return [r.replica for r in await store.xds_streams()]
        finally:
            await store.clear_xds_streams("replica-now")
            await store.close()

    live = asyncio.run(write_and_read())
    assert "replica-now" in live
    assert not {"replica-gone", "replica-stale", "replica-garbage"} & set(live)
    kept = set(redis_client.hkeys(keys.XDS_STREAMS))
    # Stale is left out but kept (it may come back); long gone and garbage are removed.
    assert "replica-stale" in kept and not {"replica-gone", "replica-garbage"} & kept
    redis_client.hdel(keys.XDS_STREAMS, "replica-stale")


def test_writes_read_the_whole_table_once_per_sweep_not_every_second(
    redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every replica writes its streams about every second; an entry can
    be hundreds of kilobytes (NACK errors of 200 streams), so reading every
    replica's entry on each write cost replicas x entry size per second."""
    import redis.asyncio as aioredis

    from lookaside_registry import keys

    reads: list[str] = []
    command = aioredis.Redis.execute_command

    async def counted(self: Any, *args: Any, **kw: Any) -> Any:
        if args[:2] == ("HGETALL", keys.XDS_STREAMS):
            reads.append(args[1])
        return await command(self, *args, **kw)

    monkeypatch.setattr(aioredis.Redis, "execute_command", counted)
    store = RegistryStore.from_url(redis_url)

    async def writes() -> None:
        try:
            for total in range(5):
                await store.set_xds_streams("replica-often", [], total)
        finally:
            await store.clear_xds_streams("replica-often")
            await store.close()

    asyncio.run(writes())
    assert len(reads) == 1
