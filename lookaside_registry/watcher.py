"""RegistryWatcher: keeps the latest snapshot of every pool in memory.

It learns of changes from the registry itself (RegistryStore.changes), so
writes from the admin API or other replicas reach it: a change message is a
nudge to reload one pool,
and a version check on a short interval catches any nudge that was lost.
Bursts of changes are coalesced: a pool is reloaded once however many
nudges arrived while it was waiting.

While Redis is unreachable the last snapshots stay as they are.

Redis restored from a stale snapshot (RDB or AOF) goes back in time: a
pool's version is lower than the last one seen. The restored data can hold
self-registered backends whose leases ended since (they deregistered or
expired). Every one that the last snapshot before the restore did not hold
is left out of the lists at once and deregistered with its own, stale,
lease id (a backend that registered again since has a new lease, which
that refuses). Static backends and backends an operator holds are never
touched, and a restore never leaves a list empty: when no live backend
would be left, the pool is served as restored.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Callable

from lookaside_registry.asyncutil import cancel_and_wait, cancelling
from lookaside_registry.errors import RegistryFailure, Unavailable
from lookaside_registry.model import PoolSnapshot
from lookaside_registry.port import WatchPort

log = logging.getLogger("lookaside_registry")

ChangeHook = Callable[[str, PoolSnapshot | None], None]


class RegistryWatcher:
    def __init__(
        self,
        store: WatchPort,
        *,
        resync_interval: float = 1.0,
        hooks: list[ChangeHook] | None = None,
    ) -> None:
        self.store = store
        self.resync_interval = resync_interval
        self.hooks: list[ChangeHook] = list(hooks or [])
        self.snapshots: dict[str, PoolSnapshot] = {}
        self.redis_ok = False
        self._dirty: set[str] = set()
        self._resync_due = False
        self._wake = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._first_sync = asyncio.Event()
        # pool -> {backend id: lease id}: leases that ended before Redis was
        # restored from a stale snapshot, kept out of the lists until gone.
        self.ended: dict[str, dict[str, str]] = {}

    async def start(self) -> None:
        self._tasks = [
            asyncio.create_task(self._listen(), name="registry-pubsub"),
            asyncio.create_task(self._resync_loop(), name="registry-resync"),
            asyncio.create_task(self._reload_loop(), name="registry-reload"),
        ]
        try:
            await asyncio.wait_for(self._first_sync.wait(), timeout=5.0)
        except TimeoutError:
            log.warning(
                "registry: Redis did not answer at start-up; serving no pools until it does"
            )

    async def stop(self) -> None:
        await cancel_and_wait(self._tasks)
        self._tasks = []

    def get(self, pool: str) -> PoolSnapshot | None:
        return self.snapshots.get(pool)

    def nudge(self, pool: str) -> None:
        self._dirty.add(pool)
        self._wake.set()

    async def _listen(self) -> None:
        backoff = 0.1
        while not cancelling():
            try:
                async for pool in self.store.changes():
                    if pool is None:
                        # Subscribed: anything that happened while we were
                        # not is caught by a full resync right away.
                        backoff = 0.1
                        self._resync_now()
                    else:
                        self.nudge(pool)
            except asyncio.CancelledError:
                raise
            except Unavailable as exc:
                if cancelling():
                    raise
                log.warning("registry: change feed lost (%s); retrying in %.1fs", exc, backoff)
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, 5.0)

    def _resync_now(self) -> None:
        self._resync_due = True
        self._wake.set()

    async def _resync_loop(self) -> None:
        while not cancelling():
            self._resync_now()
            await asyncio.sleep(self.resync_interval)

    async def _stale_pools(self) -> set[str]:
        """Pools whose version moved (or that appeared or went) since their
        snapshot: what a lost nudge would have announced."""
        pools = set(await self.store.list_pools())
        versions = await self.store.versions(pools | set(self.snapshots))
        stale = set()
        for pool, version in versions.items():
            snap = self.snapshots.get(pool)
            if pool not in pools:
                if snap is not None:
                    stale.add(pool)
            elif snap is None or snap.version != version:
                stale.add(pool)
        return stale

    async def _reload_loop(self) -> None:
        while not cancelling():
            await self._wake.wait()
            self._wake.clear()
            dirty, self._dirty = self._dirty, set()
            resync, self._resync_due = self._resync_due, False
            try:
                if resync:
                    dirty |= await self._stale_pools()
                for pool in dirty:
                    await self._reload(pool)
                if not self.redis_ok:
                    log.info("registry: Redis reachable")
                self.redis_ok = True
                self._first_sync.set()
            except asyncio.CancelledError:
                raise
            except Unavailable as exc:
                if cancelling():
                    raise
                if self.redis_ok:
                    log.warning("registry: Redis unreachable (%s); keeping the last snapshots", exc)
                self.redis_ok = False
                # Retry on the next wake-up (the resync loop wakes us).
                self._dirty |= dirty
                self._resync_due |= resync

    async def _reload(self, pool: str) -> None:
        snap = await self.store.snapshot(pool)
        old = self.snapshots.get(pool)
        if snap is None:
            self.ended.pop(pool, None)
            if old is None:
                return
            del self.snapshots[pool]
        else:
            if old is not None and old.version == snap.version:
                return
            if old is not None and snap.version < old.version:
                self._went_back(old, snap)
            snap = await self._without_ended(snap)
            self.snapshots[pool] = snap
        for hook in self.hooks:
            try:
                hook(pool, snap)
            except Exception:
                log.exception("registry: change hook failed for pool %s", pool)

    def _went_back(self, before: PoolSnapshot, restored: PoolSnapshot) -> None:
        """Redis went back in time: notes the self-registered backends of the
        restored pool that the last snapshot before it did not hold."""
        known = {b.id for b in before.backends}
        ended = {
            b.id: b.lease_id
            for b in restored.backends
            if not b.static and not b.hold and b.lease_id and b.id not in known
        }
        log.warning(
            "registry: pool %s went back from version %d to %d (Redis restored from an older "
            "snapshot); leases that ended since: %s",
            restored.name,
            before.version,
            restored.version,
            ",".join(sorted(ended)) or "none",
        )
        if ended:
            self.ended[restored.name] = {**self.ended.get(restored.name, {}), **ended}

    async def _without_ended(self, snap: PoolSnapshot) -> PoolSnapshot:
        """The snapshot without the backends whose leases ended before a
        restore, each of them deregistered with its stale lease id; as it is
        when that would leave no backend serving."""
        ended = self.ended.get(snap.name)
        if not ended:
            return snap
        gone = {b.id for b in snap.backends if ended.get(b.id) == b.lease_id}
        # A record that is gone, or holds a new lease, is no longer ours.
        for bid in list(ended):
            if bid not in gone:
                del ended[bid]
        if not ended:
            del self.ended[snap.name]
            return snap
        kept = tuple(b for b in snap.backends if b.id not in gone)
        if not any(b.serving for b in kept):
            log.warning(
                "registry: pool %s: the backends restored with ended leases are all it has; "
                "kept listed until their leases run out",
                snap.name,
            )
            del self.ended[snap.name]
            return snap
        for bid in sorted(gone):
            try:
                await self.store.deregister(snap.name, bid, ended[bid], actor="restore")
                log.warning(
                    "registry: pool %s: %s deregistered (its lease ended before the restore)",
                    snap.name,
                    bid,
                )
            except Unavailable:
                raise
            except RegistryFailure as exc:
                # Another replica was first, or the backend registered again.
                log.info(
                    "registry: pool %s: %s not deregistered after the restore (%s)",
                    snap.name,
                    bid,
                    exc,
                )
        return dataclasses.replace(snap, backends=kept)
