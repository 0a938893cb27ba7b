"""Which balancer replicas are alive, and which of them owns a piece of work.

Replicas announce themselves in the Redis hash `lookaside:replicas`
(replica id -> last seen, ms, by the replica's clock) every
`interval` seconds; one not seen for three intervals counts as gone. Every
replica computes the same owner for a key (a backend to probe, a pool to
judge) by rendezvous hashing over the live replicas, so work is split with
no coordination, and a dead replica's share moves to the survivors within
a few seconds. While Redis is unreachable the last known set stays.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections.abc import Callable

import redis.asyncio as aioredis
import redis.exceptions

from lookaside.asyncutil import cancel_and_wait, cancelling

log = logging.getLogger("lookaside.replicas")

REPLICAS_KEY = "lookaside:replicas"


def owner(key: str, replicas: list[str]) -> str:
    """Rendezvous hashing: the replica with the highest score owns `key`."""
    return max(
        replicas,
        key=lambda r: hashlib.blake2b(f"{r}|{key}".encode(), digest_size=8).digest(),
    )


class ReplicaSet:
    def __init__(self, redis: aioredis.Redis, replica_id: str, *, interval: float = 1.0) -> None:
        self.redis = redis
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
            await self.redis.hdel(REPLICAS_KEY, self.replica_id)
        except (redis.exceptions.RedisError, OSError):
            pass

    async def refresh(self) -> None:
        now = int(time.time() * 1000)
        await self.redis.hset(REPLICAS_KEY, self.replica_id, now)
        seen = await self.redis.hgetall(REPLICAS_KEY)
        stale = 3 * self.interval * 1000
        live = {
            (k.decode() if isinstance(k, bytes) else k)
            for k, v in seen.items()
            if now - int(v) <= stale
        }
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
            except (redis.exceptions.RedisError, OSError) as exc:
                if cancelling():
                    raise
                log.debug("membership update failed (%s)", exc)
            await asyncio.sleep(self.interval)
