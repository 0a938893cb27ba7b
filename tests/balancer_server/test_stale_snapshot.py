"""Redis restarted from a stale snapshot must not bring back backends whose
leases ended: a real redis-server with persistence, a real balancer, and
the lists a stock grpcio stub reads from it."""

from __future__ import annotations

import asyncio
import queue
import time
from collections.abc import Iterator

import pytest

from lookaside.redis_process import RedisProcess
from lookaside_registry.model import (
    Backend,
    HealthChecks,
    OutlierDetection,
    PoolConfig,
    backend_id_for,
)
from lookaside_registry.reaper import reap_forever
from lookaside_registry.store import RegistryStore
from tests.support import BalancerHandle, LbStream, wait_until

PORTS = (9701, 9702, 9703, 9704)


@pytest.fixture
def own_redis(tmp_path) -> Iterator[RedisProcess]:  # type: ignore[no-untyped-def]
    proc = RedisProcess(persist=True, data_dir=str(tmp_path / "redis")).start()
    try:
        yield proc
    finally:
        proc.stop()


def _addrs(entries: list[tuple[str, str, bool]]) -> set[str]:
    return {a for a, _, drop in entries if not drop}


def test_backend_that_left_is_never_listed_again_after_restore(
    own_redis: RedisProcess,
    tmp_path,
    pool_name: str,  # type: ignore[no-untyped-def]
) -> None:
    balancer = BalancerHandle(own_redis.url)
    stream = None
    try:
        store = balancer.store
        # No process listens at these ports: only the registry decides.
        quiet = PoolConfig(
            name=pool_name,
            health_checks=HealthChecks(enabled=False),
            outlier_detection=OutlierDetection(enabled=False),
        )
        balancer.run(store.put_pool(quiet))
        leases = [
            balancer.run(
                store.register(
                    pool=pool_name, host="127.0.0.1", ip="127.0.0.1", port=p, lease_ttl_ms=60_000
                )
            )
            for p in PORTS
        ]
        # A static backend and an operator's hold are never touched by this.
        balancer.run(
            store.put_static(
                Backend(
                    id=backend_id_for("127.0.0.1", 9709),
                    pool=pool_name,
                    host="127.0.0.1",
                    ip="127.0.0.1",
                    port=9709,
                    static=True,
                )
            )
        )
        stream = LbStream(balancer.address, pool_name)
        stream.next()  # initial response
        everyone = {f"127.0.0.1:{p}" for p in (*PORTS, 9709)}
        wait_until(lambda: _addrs(stream.next_list()) == everyone, timeout=10)

        snap = str(tmp_path / "stale.rdb")
        own_redis.snapshot(snap)
        gone = leases[-1]
        balancer.run(store.deregister(pool_name, gone.backend_id, gone.lease_id))
        left = everyone - {f"127.0.0.1:{PORTS[-1]}"}
        assert _addrs(stream.next_list()) == left

        own_redis.restart(rdb=snap)

        # Every list a client gets from now on: never empty, never the one
        # that left, always the live ones.
        seen = []
        until = time.monotonic() + 4.0
        while time.monotonic() < until:
            try:
                entries = stream.next_list(timeout=0.3)
            except queue.Empty:
                continue
            seen.append(_addrs(entries))
        for addrs in seen:
            assert addrs == left, seen
        # Lists keep flowing after the restore.
        balancer.run(
            store.register(
                pool=pool_name, host="127.0.0.1", ip="127.0.0.1", port=9705, lease_ttl_ms=60_000
            )
        )
        assert _addrs(stream.next_list()) == left | {"127.0.0.1:9705"}

        # The stale record is gone from Redis too (deregistered with its own
        # stale lease id), and the live ones are still there.
        def redis_ids() -> set[str]:
            snapshot = balancer.run(store.snapshot(pool_name))
            return {b.id for b in snapshot.backends} if snapshot else set()

        wait_until(lambda: gone.backend_id not in redis_ids(), timeout=5)
        assert {lease.backend_id for lease in leases[:-1]} <= redis_ids()
    finally:
        if stream is not None:
            stream.close()
        balancer.stop()


def test_lease_that_ended_before_the_outage_gets_no_outage_grace(
    own_redis: RedisProcess,
    tmp_path,
    pool_name: str,  # type: ignore[no-untyped-def]
) -> None:
    """No memory of the past needed: lease deadlines are Redis TIME, so a
    restored lease whose deadline passed before the outage began was not
    live before it, and the reaper's outage grace does not cover it; a lease
    that was live before the outage and ran out during it keeps the grace."""

    async def run() -> None:
        store = RegistryStore.from_url(own_redis.url)
        reaper: asyncio.Task[None] | None = None
        try:

            async def reg(port: int, ttl: int):  # type: ignore[no-untyped-def]
                return await store.register(
                    pool=pool_name, host="127.0.0.1", ip="127.0.0.1", port=port, lease_ttl_ms=ttl
                )

            live = await reg(9801, 60_000)
            await reg(9802, 60_000)
            gone = await reg(9803, 1_000)  # its lease ends long before the outage
            mid = await reg(9804, 3_000)  # live when the outage begins, ends during it
            snap = str(tmp_path / "stale.rdb")
            own_redis.snapshot(snap)
            await store.deregister(pool_name, gone.backend_id, gone.lease_id)
            reaper = asyncio.create_task(
                reap_forever(store, interval=0.1, max_share=0.5, outage_grace=30.0)
            )
            await asyncio.sleep(1.5)  # gone's deadline has passed
            own_redis.kill()
            await asyncio.sleep(2.5)  # mid's deadline passes while Redis is down
            own_redis.restart(rdb=snap)

            async def ids() -> set[str]:
                try:
                    snapshot = await store.snapshot(pool_name)
                except Exception:
                    return {"unreachable"}
                return {b.id for b in snapshot.backends} if snapshot else set()

            deadline = time.monotonic() + 30.0
            while gone.backend_id in await ids() and time.monotonic() < deadline:
                await asyncio.sleep(0.1)
            now = await ids()
            assert gone.backend_id not in now
            assert {live.backend_id, mid.backend_id} <= now
        finally:
            if reaper is not None:
                reaper.cancel()
                await asyncio.gather(reaper, return_exceptions=True)
            await store.close()

    asyncio.run(run())
