"""Which balancer replicas are alive, and which of them owns a piece of work.

Replicas announce themselves in the registry (RegistryStore.touch_replica,
by the Redis server's clock) every `interval` seconds; one not seen for
three intervals counts as gone. Every replica computes the same owner for
a key (a backend to probe, a pool to judge) by rendezvous hashing over the
live replicas, so work is split with no coordination, and a dead replica's
share moves to the survivors within a few seconds. While Redis is
unreachable the last known set stays.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import Callable

from lookaside_registry.asyncutil import cancel_and_wait, cancelling
from lookaside_registry.errors import Unavailable
from lookaside_registry.port import ReplicaPort

log = logging.getLogger("lookaside.replicas")


def owner(key: str, replicas: list[str]) -> str:
    """Rendezvous hashing: the replica with the highest score owns `key`."""
    return max(
        replicas,
        key=lambda r: hashlib.blake2b(f"{r}|{key}".encode(), digest_size=8).digest(),
    )


class ReplicaSet:
    def __init__(self, store: ReplicaPort, replica_id: str, *, interval: float = 1.0) -> None:
        self.store = store
        self.replica_id = replica_id
        self.interval = interval
        self.live: list[str] = [replica_id]
        self.hooks: list[Callable[[], None]] = []
        self._task: asyncio.Task[None] | None = None

    def owns(self, key: str) -> bool:
        return owner(key, self.live) == self.replica_id

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="replica-membership")

    async def stop(self) -> None:
        if self._task is None:
            return
        await cancel_and_wait([self._task])
        self._task = None
        try:
            await self.store.forget_replica(self.replica_id)
        except Unavailable:
            pass

    async def refresh(self) -> None:
        live = set(await self.store.touch_replica(self.replica_id, int(3 * self.interval * 1000)))
        live.add(self.replica_id)
        if sorted(live) != self.live:
            self.live = sorted(live)
            log.info("live replicas %s", ",".join(self.live))
            for hook in self.hooks:
                hook()

    async def _run(self) -> None:
        while not cancelling():
            try:
                await self.refresh()
            except asyncio.CancelledError:
                raise
            except Unavailable as exc:
                if cancelling():
                    raise
                log.debug("membership update failed (%s)", exc)
            await asyncio.sleep(self.interval)
