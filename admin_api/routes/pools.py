"""/api/v1/pools: create, read, list, update and delete pools.

Every write is a registry Lua script that bumps the pool's version and
publishes the change; the balancers pick it up from Redis.
"""

from __future__ import annotations

import logging
from typing import Annotated

from fastapi import APIRouter, Query, Response, status

from admin_api import metrics
from admin_api.deps import PoolPath, ReaderDep, StoreDep, WriterDep
from admin_api.errors import Conflict
from admin_api.schemas.common import COMMON, CONFLICT, NOT_FOUND
from admin_api.schemas.pools import PoolCreate, PoolList, PoolOut, PoolPatch, PoolSettings
from lookaside.registry.model import PoolSnapshot
from lookaside.registry.store import RegistryStore
from lookaside.registry.validation import NotFoundError

log = logging.getLogger("lookaside.admin")

router = APIRouter(prefix="/pools", tags=["pools"], responses=COMMON)


async def load_pool(store: RegistryStore, pool: str) -> PoolSnapshot:
    """The pool's snapshot, or NotFoundError (404)."""
    snap = await store.snapshot(pool)
    if snap is None:
        raise NotFoundError(f"pool {pool!r} does not exist; create it with POST /api/v1/pools")
    return snap


async def _saved(store: RegistryStore, pool: str) -> PoolOut:
    return PoolOut.from_snapshot(await load_pool(store, pool))


@router.get("", response_model=PoolList, summary="List pools")
async def list_(store: StoreDep, _reader: ReaderDep) -> PoolList:
    pools = []
    for name in await store.list_pools():
        snap = await store.snapshot(name)
        if snap is not None:  # a name without settings is a pool being deleted
            pools.append(PoolOut.from_snapshot(snap))
    return PoolList(pools=pools)


@router.post(
    "",
    response_model=PoolOut,
    status_code=status.HTTP_201_CREATED,
    responses=CONFLICT,
    summary="Create a pool",
)
async def create(
    body: PoolCreate, store: StoreDep, actor: WriterDep, response: Response
) -> PoolOut:
    created = await store.put_pool(body.to_config(body.name), actor=actor, only_if_absent=True)
    if not created:
        raise Conflict(
            f"pool {body.name!r} already exists; change it with PUT or PATCH /api/v1/pools/{body.name}"
        )
    metrics.ACTIONS.labels("pool_created").inc()
    log.info("pool created pool=%s actor=%s", body.name, actor)
    response.headers["Location"] = f"/api/v1/pools/{body.name}"
    return await _saved(store, body.name)


@router.get("/{pool}", response_model=PoolOut, responses=NOT_FOUND, summary="Read a pool")
async def read(pool: PoolPath, store: StoreDep, _reader: ReaderDep) -> PoolOut:
    return await _saved(store, pool)


@router.put(
    "/{pool}", response_model=PoolOut, responses=NOT_FOUND, summary="Replace a pool's settings"
)
async def replace(pool: PoolPath, body: PoolSettings, store: StoreDep, actor: WriterDep) -> PoolOut:
    snap = await load_pool(store, pool)
    await store.put_pool(body.to_config(pool, snap.config), actor=actor)
    metrics.ACTIONS.labels("pool_updated").inc()
    log.info("pool replaced pool=%s actor=%s", pool, actor)
    return await _saved(store, pool)


@router.patch(
    "/{pool}",
    response_model=PoolOut,
    responses=NOT_FOUND,
    summary="Change some of a pool's settings",
)
async def update(pool: PoolPath, body: PoolPatch, store: StoreDep, actor: WriterDep) -> PoolOut:
    snap = await load_pool(store, pool)
    config = body.apply(snap.config).to_config(pool, snap.config)
    if config == snap.config:
        return PoolOut.from_snapshot(snap)  # nothing to change, nothing written
    await store.put_pool(config, actor=actor)
    metrics.ACTIONS.labels("pool_updated").inc()
    log.info(
        "pool updated pool=%s actor=%s fields=%s", pool, actor, ",".join(sorted(body.changes()))
    )
    return await _saved(store, pool)


@router.delete(
    "/{pool}",
    status_code=status.HTTP_204_NO_CONTENT,
    response_class=Response,
    responses={**NOT_FOUND, **CONFLICT},
    summary="Delete a pool",
)
async def delete(
    pool: PoolPath,
    store: StoreDep,
    actor: WriterDep,
    force: Annotated[
        bool, Query(description="delete even while backends are registered and live")
    ] = False,
) -> Response:
    snap = await load_pool(store, pool)
    seconds, micros = await store.redis.time()
    now_ms = int(seconds) * 1000 + int(micros) // 1000
    live = [b for b in snap.backends if b.static or b.lease_expires_ms > now_ms]
    if live and not force:
        raise Conflict(
            f"pool {pool!r} still has {len(live)} live backend(s); drain and remove them, "
            "or delete with ?force=true"
        )
    await store.delete_pool(pool)
    metrics.ACTIONS.labels("pool_deleted").inc()
    log.info(
        "pool deleted pool=%s actor=%s live_backends=%d forced=%s", pool, actor, len(live), force
    )
    return Response(status_code=status.HTTP_204_NO_CONTENT)
