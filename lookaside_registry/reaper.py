"""Lease expiry. Every balancer replica runs it; the Lua script is atomic
and idempotent, so replicas racing on one pool do no harm.

Self-preservation: while Redis is unreachable nothing is evicted (nothing
can be), and after Redis comes back the reaper waits `outage_grace`
seconds before it evicts again, so that backends whose heartbeats failed
during the outage can renew their leases first. The grace covers only
leases that were live before the outage: lease deadlines are Redis TIME,
so a lease whose deadline is earlier than the last time the reaper saw
Redis up (one a Redis restored from a stale snapshot brought back) is
reaped at once, through the panic guard as always. And when more than
`max_share` of a pool's backends expire at once, the panic guard in the
script keeps them and logs a 'panic' event, for at most the store's
guard bound, and never a backend that fails its health checks.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from lookaside_registry.asyncutil import cancelling
from lookaside_registry.errors import Unavailable
from lookaside_registry.port import ReaperPort

log = logging.getLogger("lookaside_registry")

# Sweeps between prunings of the pools index.
PRUNE_EVERY = 20


async def reap_forever(
    store: ReaperPort,
    *,
    interval: float = 0.5,
    max_share: float = 0.5,
    outage_grace: float = 15.0,
    on_expired: Callable[[str, list[str]], None] | None = None,
    on_panic: Callable[[str, list[str]], None] | None = None,
) -> None:
    quiet_until = 0.0
    warned: dict[str, float] = {}
    holding: set[str] = set()
    sweeps = 0
    was_down = False
    # Redis TIME when the reaper last saw Redis up, and (during the grace)
    # when the outage began: leases that ended before it get no grace.
    last_up_ms = 0
    outage_began_ms = 0
    while not cancelling():
        try:
            pools = await store.list_pools()
            now_ms = await store.now_ms()
            if was_down:
                was_down = False
                quiet_until = time.monotonic() + outage_grace
                outage_began_ms = last_up_ms
                log.warning(
                    "reaper: Redis is back; for %.0fs only leases that ended before the outage "
                    "are evicted",
                    outage_grace,
                )
            last_up_ms = now_ms
            sweeps += 1
            if sweeps % PRUNE_EVERY == 0:
                await store.prune_index()
            quiet = time.monotonic() < quiet_until
            if not quiet or outage_began_ms > 0:
                for pool in pools:
                    result = await store.reap_expired(
                        pool, max_share, ended_before_ms=outage_began_ms if quiet else 0
                    )
                    if result.removed:
                        log.info(
                            "lease expired pool=%s backends=%s", pool, ",".join(result.removed)
                        )
                        if on_expired:
                            on_expired(pool, result.removed)
                    if result.held and time.monotonic() - warned.get(pool, -1e9) > 30:
                        warned[pool] = time.monotonic()
                        log.warning(
                            "panic guard pool=%s: %d leases expired at once, kept listed: %s",
                            pool,
                            len(result.held),
                            ",".join(result.held),
                        )
                    # on_panic hears of every sweep that holds, and once of
                    # the first one that no longer does (with no ids).
                    if on_panic and (result.held or pool in holding):
                        on_panic(pool, result.held)
                    if result.held:
                        holding.add(pool)
                    else:
                        holding.discard(pool)
        except asyncio.CancelledError:
            raise
        except Unavailable as exc:
            if cancelling():
                raise
            if not was_down:
                log.warning("reaper: Redis unreachable (%s); evicting nothing", exc)
            was_down = True
        await asyncio.sleep(interval)
