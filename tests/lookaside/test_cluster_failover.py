"""The registry on a Redis Cluster of 3 masters and 3 replicas when a node
dies: the change feed moves to a node that answers (the one it was on is
SIGKILLed, a master, so its replica is promoted), and writes to the slot
of the killed master succeed once the replica has taken over."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator

import pytest

from lookaside.redis_cluster import RedisClusterProcesses
from lookaside_registry import keys
from lookaside_registry.errors import Unavailable
from lookaside_registry.model import PoolConfig
from lookaside_registry.store import RegistryStore


@pytest.fixture
def cluster() -> Iterator[RedisClusterProcesses]:
    with RedisClusterProcesses(masters=3, replicas=1, node_timeout_ms=1000) as c:
        yield c


def subscribed_node(cluster: RedisClusterProcesses) -> int:
    """The port of the node the store's change feed is subscribed on."""
    ports = [
        n.port
        for n in cluster.live()
        if "cmd=subscribe" in cluster.on(n.port, "client", "list", "type", "pubsub")
    ]
    assert len(ports) == 1, ports
    return ports[0]


@pytest.mark.timeout(120)
def test_the_change_feed_and_writes_survive_a_killed_master(
    cluster: RedisClusterProcesses,
) -> None:
    async def scenario() -> None:
        store = RegistryStore.from_url(cluster.url, cluster=True)
        masters = {n.port for n in cluster.cluster_nodes() if n.is_master}
        # A feed on a master (the node is picked at random; a feed that
        # landed on a replica is closed and opened again).
        for _ in range(100):
            feed = store.changes()
            assert await anext(feed) is None  # subscribed
            port = subscribed_node(cluster)
            if port in masters:
                break
            await feed.aclose()
        assert port in masters
        seen: asyncio.Queue[str | None] = asyncio.Queue()

        async def follow() -> None:  # as the watcher does: resubscribe on loss
            current = feed
            while True:
                try:
                    async for pool in current:
                        await seen.put(pool)
                except Unavailable:
                    await asyncio.sleep(0.1)
                current = store.changes()

        task = asyncio.create_task(follow())
        try:
            pool = next(
                p
                for p in (f"f-{uuid.uuid4().hex[:8]}" for _ in range(1000))
                if cluster.master_of(cluster.keyslot(keys.config(p))).port == port
            )
            slot = cluster.keyslot(keys.config(pool))
            cluster.node(port).kill()
            await asyncio.to_thread(cluster.wait_master_changed, slot, port, 30)
            # The feed is back on a live node, and a write to the killed
            # master's slot goes to its promoted replica and is announced.
            for _ in range(100):
                try:
                    await store.put_pool(PoolConfig(name=pool))
                    break
                except Unavailable:
                    await asyncio.sleep(0.2)
            else:
                raise AssertionError("writes did not resume after the failover")
            while (got := await asyncio.wait_for(seen.get(), 30)) != pool:
                assert got is None, got  # only resubscriptions before it
            assert subscribed_node(cluster) != port
            assert (await store.snapshot(pool)) is not None
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            await store.close()

    asyncio.run(scenario())
