"""The watcher's rule for a Redis restored from an older snapshot, against a
scripted store: which restored backends it leaves out and deregisters."""

from __future__ import annotations

import asyncio
from typing import Any

from lookaside_registry.errors import LeaseRefused
from lookaside_registry.model import Backend, BackendState, PoolConfig, PoolSnapshot
from lookaside_registry.watcher import RegistryWatcher

POOL = "p"


def _b(bid: str, lease: str = "", **kw: Any) -> Backend:
    return Backend(
        id=bid, pool=POOL, host="h", ip="10.0.0.1", port=int(bid[1:]), lease_id=lease, **kw
    )


def _snap(version: int, *backends: Backend) -> PoolSnapshot:
    return PoolSnapshot(POOL, version, PoolConfig(name=POOL), tuple(backends))


class ScriptedStore:
    def __init__(self) -> None:
        self.next: PoolSnapshot | None = None
        self.deregistered: list[tuple[str, str, str]] = []
        self.refuse = False

    async def snapshot(self, pool: str) -> PoolSnapshot | None:
        return self.next

    async def deregister(self, pool: str, bid: str, lease: str, *, actor: str) -> None:
        self.deregistered.append((bid, lease, actor))
        if self.refuse:
            raise LeaseRefused("stale lease")


def _listed(w: RegistryWatcher) -> list[str]:
    snap = w.get(POOL)
    assert snap is not None
    return [b.id for b in snap.serving]


def test_restored_backends_the_last_snapshot_lacked_are_left_out_and_deregistered() -> None:
    async def run() -> None:
        store = ScriptedStore()
        w = RegistryWatcher(store)  # type: ignore[arg-type]
        # Before the restore: b1 live (lease L1), b3 registered again (lease N3).
        store.next = _snap(11, _b("b1", "L1"), _b("b3", "N3"), _b("b5", static=True))
        await w._reload(POOL)
        # Restored: b2 and b4 left since, b4 held by an operator, b6 static.
        store.next = _snap(
            10,
            _b("b1", "L1"),
            _b("b2", "L2"),
            _b("b3", "L3"),
            _b("b4", "L4", state=BackendState.DISABLED, hold="disabled"),
            _b("b5", static=True),
            _b("b6", static=True),
        )
        await w._reload(POOL)
        assert _listed(w) == ["b1", "b3", "b5", "b6"]
        assert store.deregistered == [("b2", "L2", "restore")]
        # Refused (another replica was first): still left out until it is gone.
        store.refuse = True
        store.next = _snap(12, _b("b1", "L1"), _b("b2", "L2"), _b("b3", "L3"))
        await w._reload(POOL)
        assert _listed(w) == ["b1", "b3"]
        # Gone from Redis: forgotten; the same id registering again is listed.
        store.next = _snap(13, _b("b1", "L1"), _b("b3", "L3"))
        await w._reload(POOL)
        assert w.ended == {}
        store.next = _snap(14, _b("b1", "L1"), _b("b2", "M2"), _b("b3", "L3"))
        await w._reload(POOL)
        assert _listed(w) == ["b1", "b2", "b3"]

    asyncio.run(run())


def test_a_restore_never_empties_a_list() -> None:
    async def run() -> None:
        store = ScriptedStore()
        w = RegistryWatcher(store)  # type: ignore[arg-type]
        store.next = _snap(5, _b("b1", "L1"))
        await w._reload(POOL)
        store.next = _snap(3, _b("b2", "L2"), _b("b1", "L1", state=BackendState.DRAINING))
        await w._reload(POOL)
        assert _listed(w) == ["b2"]
        assert store.deregistered == []

    asyncio.run(run())
