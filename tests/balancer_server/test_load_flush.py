"""A load report flush that fails is retried without losing or double
counting reports: each batch keeps its id until the registry has taken it,
and the registry adds a batch id once. The faults are injected into the
real store against a real Redis: a write that never reached Redis, and one
that reached it but whose reply was lost."""

from __future__ import annotations

from typing import Any

import pytest

from balancer_server.load_reports import LoadReportSink
from lookaside_proto.lb.v1 import load_balancer_pb2 as lb
from lookaside_registry.errors import Unavailable
from lookaside_registry.model import PoolConfig
from lookaside_registry.store import RegistryStore

pytestmark = pytest.mark.asyncio(loop_scope="session")


class FaultyStore(RegistryStore):
    """The real store; its next flush fails before or after the write."""

    fail: str = ""  # "before" | "after" | ""

    async def flush_reports(self, *args: Any, **kwargs: Any) -> None:
        fail, self.fail = self.fail, ""
        if fail == "before":
            raise Unavailable("connection refused (injected)")
        await super().flush_reports(*args, **kwargs)
        if fail == "after":
            raise Unavailable("reply lost (injected)")


def stats(started: int) -> lb.ClientStats:
    return lb.ClientStats(num_calls_started=started, num_calls_finished=started)


@pytest.mark.parametrize("fail", ["before", "after"])
async def test_a_failed_flush_is_retried_and_counted_once(
    redis_url: str, pool_name: str, fail: str
) -> None:
    store = FaultyStore.from_url(redis_url)
    assert isinstance(store, FaultyStore)
    try:
        await store.put_pool(PoolConfig(name=pool_name))
        sink = LoadReportSink(store, replica_id="replica-x")
        sink.add(pool_name, stats(7))
        sink.add(pool_name, stats(3))
        store.fail = fail
        with pytest.raises(Unavailable):
            await sink.flush()
        sink.add(pool_name, stats(5))  # a report between the two flushes
        await sink.flush()
        await sink.flush()  # nothing left to write
        total = await store.load_total(pool_name)
        assert (total["reports"], total["started"]) == (3, 15)
    finally:
        await store.close()


async def test_a_flush_of_several_pools_survives_redis_losing_its_scripts(
    redis_url: str, pool_name: str
) -> None:
    """One flush is one pipeline of a script per pool: when Redis has lost
    its scripts (restarted, SCRIPT FLUSH), the flush loads it and runs again."""
    store = RegistryStore.from_url(redis_url)
    pools = [pool_name, f"{pool_name}-2", f"{pool_name}-3"]
    try:
        for pool in pools:
            await store.put_pool(PoolConfig(name=pool))
        sink = LoadReportSink(store, replica_id="replica-y")
        for i, pool in enumerate(pools):
            sink.add(pool, stats(i + 1))
            sink.set_stream_count(pool, i + 10)
        await sink.flush()
        import redis.asyncio as aioredis

        admin = aioredis.Redis.from_url(redis_url)
        await admin.script_flush()
        await admin.aclose()
        for i, pool in enumerate(pools):
            sink.add(pool, stats(i + 1))
        await sink.flush()
        for i, pool in enumerate(pools):
            total = await store.load_total(pool)
            assert (total["reports"], total["started"]) == (2, 2 * (i + 1))
            streams = await store.replica_streams(pool)
            assert [(r.replica, r.streams) for r in streams] == [("replica-y", i + 10)]
    finally:
        await store.close()
