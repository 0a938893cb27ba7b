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
    """The real store; its next add_reports fails before or after the write."""

    fail: str = ""  # "before" | "after" | ""

    async def add_reports(self, *args: Any, **kwargs: Any) -> bool:
        fail, self.fail = self.fail, ""
        if fail == "before":
            raise Unavailable("connection refused (injected)")
        done = await super().add_reports(*args, **kwargs)
        if fail == "after":
            raise Unavailable("reply lost (injected)")
        return done


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
