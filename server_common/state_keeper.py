"""StateKeeper: declared operator state restored without an operator.

A balancer or admin started with --state-file applies the file at start
and then, every few seconds, checks a marker key it wrote. A missing marker
means Redis lost its data (restarted empty, or a different Redis): the
keeper applies the last state it saw (exported while the marker was there,
so operator changes made through the admin API since the start survive),
or the file when it saw none. Holds whose backend has not registered again
yet are retried on every tick until it has. Applying merges (a partial
`config:` changes only the keys it names; see server_common.declarative) and
is idempotent, so several replicas keeping the same state do no harm.
"""

from __future__ import annotations

import asyncio
import logging
import time

from lookaside_registry.asyncutil import cancelling
from lookaside_registry.errors import Unavailable
from lookaside_registry.port import StatePort
from server_common import declarative as d

log = logging.getLogger("lookaside.state")

PENDING_HOLD_LIMIT = 600.0  # seconds a hold waits for its backend


class StateKeeper:
    def __init__(
        self, store: StatePort, doc: d.StateDocument, *, interval: float = 2.0, actor: str = ""
    ) -> None:
        self.store = store
        self.declared = doc
        self.last_seen: d.StateDocument | None = None
        self.interval = interval
        self.actor = actor or "state-keeper"
        self.pending: dict[tuple[str, str], float] = {}
        self.restores = 0
        self.applied_once = False
        self._task: asyncio.Task[None] | None = None

    async def tick(self) -> None:
        if not self.applied_once or not await self.store.has_state_marker():
            # The file at start; after a loss, the last state seen.
            doc = (self.last_seen or self.declared) if self.applied_once else self.declared
            self.applied_once = True
            result = await d.apply(self.store, doc, actor=self.actor)
            await self.store.set_state_marker(str(int(time.time())))
            self.restores += 1
            now = time.monotonic()
            self.pending = {key: now for key in result.pending}
            log.warning(
                "state applied (%s) changes=%d pending_holds=%d: %s",
                "the last state seen" if doc is self.last_seen else "the state file",
                len(result.changes),
                len(result.pending),
                "; ".join(result.changes) or "none",
            )
            return
        if self.pending:
            await self._retry_holds()
        seen = await d.export(self.store)
        if await self.store.has_state_marker():  # not emptied while exporting
            self.last_seen = seen

    async def _retry_holds(self) -> None:
        pools = {p.name: p for p in (self.last_seen or self.declared).pools}
        for (pool, address), since in list(self.pending.items()):
            spec = pools.get(pool)
            holds = [h for h in spec.holds if h.address == address] if spec else []
            doc = d.StateDocument(pools=[d.PoolState(name=pool, holds=holds)]) if holds else None
            if doc is None or time.monotonic() - since > PENDING_HOLD_LIMIT:
                self.pending.pop((pool, address), None)
                continue
            # Only the hold: its config names no key, so the settings stay.
            result = await d.apply(self.store, doc, actor=self.actor)
            if not result.pending:
                self.pending.pop((pool, address), None)
                log.info("hold restored pool=%s backend=%s", pool, address)

    async def run(self) -> None:
        while True:
            try:
                await self.tick()
            except (OSError, Unavailable) as exc:
                # The store's own calls (apply, export) fail as Unavailable;
                # the keeper keeps going (a Redis Cluster failover reaches
                # one of them while the marker's node still answers).
                if cancelling():
                    raise
                log.debug("state keeper: redis unavailable: %s", exc)
            await asyncio.sleep(self.interval)

    def start(self) -> StateKeeper:
        self._task = asyncio.get_running_loop().create_task(self.run(), name="state-keeper")
        return self

    async def stop(self) -> None:
        if self._task is not None:
            from lookaside_registry.asyncutil import cancel_and_wait

            await cancel_and_wait([self._task])


def keeper_from_file(store: StatePort, path: str, actor: str) -> StateKeeper | None:
    """A started keeper for `path` (empty: None); StateError for a bad file."""
    if not path:
        return None
    return StateKeeper(store, d.load(path), actor=actor).start()
