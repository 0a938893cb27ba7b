"""Lease expiry. Every balancer replica runs it; the Lua script is atomic
and idempotent, so replicas racing on one pool do no harm. While Redis is
unreachable nothing is evicted, because nothing can be."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

import redis.exceptions

from lookaside.registry.store import RegistryStore

log = logging.getLogger("lookaside.registry")


async def reap_forever(
    store: RegistryStore,
    *,
    interval: float = 0.5,
    on_expired: Callable[[str, list[str]], None] | None = None,
) -> None:
    while True:
        try:
            for pool in await store.list_pools():
                expired = await store.reap_expired(pool)
                if expired:
                    log.info("lease expired pool=%s backends=%s", pool, ",".join(expired))
                    if on_expired:
                        on_expired(pool, expired)
        except asyncio.CancelledError:
            raise
        except (redis.exceptions.RedisError, OSError) as exc:
            log.debug("reaper: Redis unreachable (%s); evicting nothing", exc)
        await asyncio.sleep(interval)
