"""The balancer's registry watcher and feed hub over the in-memory registry
port (no Redis, no gRPC): streams follow the pools, and a registry that goes
away leaves every list as it was."""

from __future__ import annotations

import asyncio
from collections.abc import Hashable

import pytest

from balancer_server.feeds import FeedHub, PoolFeed
from lookaside_registry.memory import MemoryStore
from lookaside_registry.watcher import RegistryWatcher

pytestmark = pytest.mark.asyncio(loop_scope="session")


class Subscriber:
    """A stream as the hub sees it: records the payloads it was offered."""

    def __init__(self, feed: PoolFeed) -> None:
        self.feed = feed
        self.subset: Hashable = None
        self.payloads: list[bytes] = []
        self.arrived = asyncio.Event()

    def offer(self, generation: int = 0) -> bool:
        payload = self.feed.payload
        if payload is not None and (not self.payloads or self.payloads[-1] is not payload):
            self.payloads.append(payload)
            self.arrived.set()
        return False  # written at once

    def move(self, feed: PoolFeed) -> None:
        self.feed.unsubscribe(self)
        self.feed = feed
        feed.subscribe(self)


async def until(predicate, timeout: float = 5.0) -> None:  # type: ignore[no-untyped-def]
    async def wait() -> None:
        while not predicate():
            await asyncio.sleep(0.01)

    await asyncio.wait_for(wait(), timeout)


async def test_streams_follow_pools_and_keep_lists_while_the_registry_is_away() -> None:
    store = MemoryStore()
    hub = FeedHub("epoch1")
    watcher = RegistryWatcher(store, resync_interval=0.05, hooks=[hub.on_change])
    await watcher.start()
    try:
        await store.register(pool="svc", host="h", ip="10.0.0.1", port=80)
        await until(lambda: hub.feed("svc").exists)
        name = "svc.example.test:443"
        sub = Subscriber(hub.resolve(name))
        sub.feed.subscribe(sub)
        hub.track(name, sub)
        assert sub.feed.name == "svc" and len(sub.payloads) == 1

        await store.register(pool="svc.example.test", host="h", ip="10.0.0.2", port=80)
        await until(lambda: sub.feed.name == "svc.example.test")
        assert len(sub.payloads) == 2

        store.available = False
        await until(lambda: watcher.redis_ok is False)  # a resync failed
        assert hub.feed("svc.example.test").payload == sub.payloads[-1]
        store.available = True

        await store.delete_pool("svc.example.test")
        await until(lambda: sub.feed.name == "svc")
        assert sub.payloads[-1] == hub.feed("svc").payload
        hub.untrack(name, sub)
        assert hub.streams_by_name == {}
    finally:
        await watcher.stop()
