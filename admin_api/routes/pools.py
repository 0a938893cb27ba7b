"""/api/v1/pools: create, read, list, update and delete pools.

Every write is one atomic registry operation that bumps the pool's version
and publishes the change; the balancers pick it up from the registry.
PUT and PATCH are compare-and-sets on the pool's config version (the one
given as If-Match, or else the one read at the start of the request): a
concurrent change of the settings gets 409 with the current version.
"""

from __future__ import annotations

import logging
from typing import Annotated

from fastapi import APIRouter, Header, Query, Response, status

from admin_api import metrics
from admin_api.deps import PoolPath, ReaderDep, StoreDep, WriterDep
from lookaside_registry.errors import NotFound
from lookaside_registry.model import PoolSnapshot
from lookaside_registry.port import PoolReads
from server_common.schemas.common import COMMON, CONFLICT, NOT_FOUND
from server_common.schemas.pools import PoolCreate, PoolList, PoolOut, PoolPatch, PoolSettings

log = logging.getLogger("lookaside.admin")

router = APIRouter(prefix="/pools", tags=["pools"], responses=COMMON)


async def load_pool(store: PoolReads, pool: str) -> PoolSnapshot:
    """The pool's snapshot, or NotFoundError (404)."""
    snap = await store.snapshot(pool)
    if snap is None:
        raise NotFound(f"pool {pool!r} does not exist; create it with POST /api/v1/pools")
    return snap


async def _saved(store: PoolReads, pool: str) -> PoolOut:
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
    # Conflict (409) when it exists, checked in the write.
    await store.put_pool(body.to_config(body.name), actor=actor, only_if_absent=True)
    metrics.ACTIONS.labels("pool_created").inc()
    log.info("pool created pool=%s actor=%s", body.name, actor)
    response.headers["Location"] = f"/api/v1/pools/{body.name}"
    return await _saved(store, body.name)


@router.get("/{pool}", response_model=PoolOut, responses=NOT_FOUND, summary="Read a pool")
async def read(pool: PoolPath, store: StoreDep, _reader: ReaderDep) -> PoolOut:
    return await _saved(store, pool)


IfMatch = Annotated[
    str,
    Header(
        pattern=r'^("?[0-9]{1,15}"?)?$',
        description="the config_version the change is based on; 409 when the settings "
        "changed since (default: the version read at the start of the request)",
    ),
]


def _expected(if_match: str, snap: PoolSnapshot) -> int:
    return int(if_match.strip('"')) if if_match else snap.config_version


@router.put(
    "/{pool}",
    response_model=PoolOut,
    responses={**NOT_FOUND, **CONFLICT},
    summary="Replace a pool's settings",
)
async def replace(
    pool: PoolPath,
    body: PoolSettings,
    store: StoreDep,
    actor: WriterDep,
    if_match: IfMatch = "",
) -> PoolOut:
    snap = await load_pool(store, pool)
    await store.put_pool(
        body.to_config(pool, snap.config),
        actor=actor,
        only_if_exists=True,
        expected_version=_expected(if_match, snap),
    )
    metrics.ACTIONS.labels("pool_updated").inc()
    log.info("pool replaced pool=%s actor=%s", pool, actor)
    return await _saved(store, pool)


@router.patch(
    "/{pool}",
    response_model=PoolOut,
    responses={**NOT_FOUND, **CONFLICT},
    summary="Change some of a pool's settings",
)
async def update(
    pool: PoolPath,
    body: PoolPatch,
    store: StoreDep,
    actor: WriterDep,
    if_match: IfMatch = "",
) -> PoolOut:
    snap = await load_pool(store, pool)
    expected = _expected(if_match, snap)
    config = body.apply(snap.config).to_config(pool, snap.config)
    if config == snap.config and expected == snap.config_version:
        return PoolOut.from_snapshot(snap)  # nothing to change, nothing written
    await store.put_pool(config, actor=actor, only_if_exists=True, expected_version=expected)
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
    await load_pool(store, pool)
    # The live check and the deletion are one atomic registry operation.
    live = await store.delete_pool(pool, actor=actor, force=force)
    metrics.ACTIONS.labels("pool_deleted").inc()
    log.info("pool deleted pool=%s actor=%s live_backends=%d forced=%s", pool, actor, live, force)
    return Response(status_code=status.HTTP_204_NO_CONTENT)
