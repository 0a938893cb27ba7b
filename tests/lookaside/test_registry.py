"""RegistryStore and RegistryWatcher against a real Redis."""

from __future__ import annotations

import asyncio

import pytest

from lookaside_registry import BackendState, PoolConfig, RegistryStore
from lookaside_registry.errors import Conflict
from lookaside_registry.machine import Event
from lookaside_registry.validation import NotFoundError
from lookaside_registry.watcher import RegistryWatcher

pytestmark = pytest.mark.asyncio(loop_scope="session")


async def test_versions_move_on_every_change(redis_url: str, pool_name: str) -> None:
    store = RegistryStore.from_url(redis_url)
    try:
        lease = await store.register(pool=pool_name, host="h", ip="10.1.1.1", port=80)
        v1 = (await store.versions([pool_name]))[pool_name]
        await store.operate(pool_name, lease.backend_id, Event.OPERATOR_DRAIN, actor="test")
        v2 = (await store.versions([pool_name]))[pool_name]
        await store.put_pool(PoolConfig(name=pool_name, report_interval_ms=5000))
        v3 = (await store.versions([pool_name]))[pool_name]
        assert v1 < v2 < v3
        snap = await store.snapshot(pool_name)
        assert snap is not None and snap.version == v3
        assert snap.config.report_interval_ms == 5000
        assert snap.backends[0].state is BackendState.DRAINING
        assert snap.serving == ()
        with pytest.raises(NotFoundError):
            await store.update_backend(pool_name, "missing", weight=2)
    finally:
        await store.close()


async def test_put_pool_only_if_absent(redis_url: str, pool_name: str) -> None:
    store = RegistryStore.from_url(redis_url)
    try:
        assert await store.put_pool(PoolConfig(name=pool_name), only_if_absent=True) == 1
        with pytest.raises(Conflict, match="already exists"):
            await store.put_pool(PoolConfig(name=pool_name, fallback=True), only_if_absent=True)
        assert (await store.get_pool(pool_name)).fallback is False  # type: ignore[union-attr]
    finally:
        await store.close()


async def test_disabled_state_survives_reregistration(redis_url: str, pool_name: str) -> None:
    store = RegistryStore.from_url(redis_url)
    try:
        lease = await store.register(pool=pool_name, host="h", ip="10.1.1.2", port=80)
        await store.operate(pool_name, lease.backend_id, Event.OPERATOR_DISABLE, actor="test")
        await store.register(pool=pool_name, host="h", ip="10.1.1.2", port=80)
        snap = await store.snapshot(pool_name)
        assert snap is not None and snap.backends[0].state is BackendState.DISABLED
    finally:
        await store.close()


async def test_watcher_sees_writes_from_another_client(redis_url: str, pool_name: str) -> None:
    writer = RegistryStore.from_url(redis_url)
    reader = RegistryStore.from_url(redis_url)
    seen: asyncio.Queue[int] = asyncio.Queue()
    watcher = RegistryWatcher(
        reader,
        resync_interval=30.0,
        hooks=[
            lambda pool, snap: (
                seen.put_nowait(len(snap.backends)) if pool == pool_name and snap else None
            )
        ],
    )
    await watcher.start()
    try:
        await writer.register(pool=pool_name, host="h", ip="10.1.2.1", port=80)
        # The pub/sub nudge arrives well before the 30 s resync would.
        assert await asyncio.wait_for(seen.get(), 5) == 1
        await writer.register(pool=pool_name, host="h", ip="10.1.2.2", port=80)
        assert await asyncio.wait_for(seen.get(), 5) == 2
    finally:
        await watcher.stop()
        await writer.close()
        await reader.close()


async def test_watcher_resync_catches_a_lost_nudge(redis_url: str, pool_name: str) -> None:
    from lookaside_registry import keys

    store = RegistryStore.from_url(redis_url)
    watcher = RegistryWatcher(store, resync_interval=0.2)
    await watcher.start()
    try:
        await store.register(pool=pool_name, host="h", ip="10.1.3.1", port=80)

        async def until(n: int) -> None:
            while (s := watcher.get(pool_name)) is None or len(s.backends) != n:
                await asyncio.sleep(0.02)

        await asyncio.wait_for(until(1), 5)
        # A write that publishes nothing: only the version check can see it.
        raw = await store.redis.hget(
            keys.backends(pool_name), (await store.snapshot(pool_name)).backends[0].id
        )  # type: ignore[union-attr]
        await store.redis.hset(
            keys.backends(pool_name), "other", raw.replace(b"10.1.3.1", b"10.1.3.9")
        )
        await store.redis.incr(keys.version(pool_name))
        await asyncio.wait_for(until(2), 5)
    finally:
        await watcher.stop()
        await store.close()
