"""Registry writes that used to race or lose state, each against a real
Redis: pool deletion racing registration, operator holds across
deregistration, and the panic guard's bound."""

from __future__ import annotations

import asyncio

import pytest

from lookaside_registry import PoolConfig, RegistryStore, keys
from lookaside_registry import transitions as t
from lookaside_registry.model import BackendState

pytestmark = pytest.mark.asyncio(loop_scope="session")

ROUNDS = 150


async def test_pool_deletion_racing_registration_keeps_the_index_whole(
    redis_url: str, pool_name: str
) -> None:
    """After a register and a delete_pool run at once, a pool whose settings
    exist is in the pools index (the reaper visits only indexed pools); an
    index entry left for a pool that is gone is pruned."""
    a, b = RegistryStore.from_url(redis_url), RegistryStore.from_url(redis_url)
    try:
        for i in range(20):  # other pools, so the index is not trivial
            await a.put_pool(PoolConfig(name=f"{pool_name}-other{i}"))
        lost: list[int] = []
        for i in range(ROUNDS):
            pool = f"{pool_name}-{i}"
            await a.register(pool=pool, host="h", ip="10.9.0.1", port=80)
            await asyncio.gather(
                a.register(pool=pool, host="h", ip="10.9.0.2", port=80),
                b.delete_pool(pool),
                return_exceptions=True,
            )
            exists = await a.redis.exists(keys.config(pool))
            indexed = await a.redis.sismember(keys.POOLS, pool)
            if exists and not indexed:
                lost.append(i)
        assert lost == [], f"pools out of the index after a race in rounds {lost}"
        await a.prune_index()
        for i in range(ROUNDS):
            pool = f"{pool_name}-{i}"
            indexed = await a.redis.sismember(keys.POOLS, pool)
            assert bool(indexed) == bool(await a.redis.exists(keys.config(pool))), pool
    finally:
        await a.close()
        await b.close()


@pytest.mark.parametrize(
    ("transition", "state"),
    [(t.DISABLE, BackendState.DISABLED), (t.DRAIN, BackendState.DRAINING)],
)
async def test_operator_hold_survives_deregistration_and_registration(
    redis_url: str, pool_name: str, transition: t.Transition, state: BackendState
) -> None:
    store = RegistryStore.from_url(redis_url)
    try:
        lease = await store.register(pool=pool_name, host="h", ip="10.9.1.1", port=80)
        await t.BackendTransitions(store).apply(
            pool_name, lease.backend_id, transition, actor="operator"
        )
        await store.deregister(pool_name, lease.backend_id, lease.lease_id)
        await store.register(pool=pool_name, host="h", ip="10.9.1.1", port=80)
        snap = await store.snapshot(pool_name)
        assert snap is not None
        assert [b.state for b in snap.backends] == [state]
        assert snap.serving == ()
    finally:
        await store.close()
