"""/api/v1/pools/{pool}/backends: list, inspect and steer a pool's backends.

Drain, undrain, disable, enable and reinstate are events of the registry's
state machine, checked against the backend's current state in the same
atomic write that changes it (409 when the state does not allow the
change). An operator's drain or disable is a hold: it outlives the
backend's deregistration and comes back with its next registration. A
removed backend loses its hold; a self-registered one comes back when it
next registers.
"""

from __future__ import annotations

import logging

from fastapi import APIRouter, Response, status

from admin_api import metrics
from admin_api.deps import BackendPath, PoolPath, ReaderDep, StoreDep, TransitionsDep, WriterDep
from admin_api.routes.pools import load_pool
from lookaside_registry import transitions as t
from lookaside_registry.hosts import resolve_host
from lookaside_registry.model import Backend
from lookaside_registry.port import PoolReads
from lookaside_registry.validation import NotFoundError
from server_common.schemas.backends import BackendCreate, BackendList, BackendOut, WeightChange
from server_common.schemas.common import COMMON, CONFLICT, NOT_FOUND

log = logging.getLogger("lookaside.admin")

router = APIRouter(
    prefix="/pools/{pool}/backends", tags=["backends"], responses={**COMMON, **NOT_FOUND}
)


async def _backend(store: PoolReads, pool: str, backend_id: str) -> Backend:
    snap = await load_pool(store, pool)
    for b in snap.backends:
        if b.id == backend_id:
            return b
    raise NotFoundError(
        f"backend {backend_id!r} is not registered in pool {pool!r}; "
        f"list them with GET /api/v1/pools/{pool}/backends"
    )


async def _out(store: PoolReads, pool: str, backend_id: str) -> BackendOut:
    return BackendOut.from_backend(await _backend(store, pool, backend_id))


@router.get("", response_model=BackendList, summary="List a pool's backends")
async def list_(pool: PoolPath, store: StoreDep, _reader: ReaderDep) -> BackendList:
    snap = await load_pool(store, pool)
    return BackendList(
        pool=pool,
        version=snap.version,
        backends=[BackendOut.from_backend(b) for b in snap.backends],
    )


@router.post(
    "",
    response_model=BackendOut,
    status_code=status.HTTP_201_CREATED,
    responses=CONFLICT,
    summary="Register a static backend",
)
async def register(
    pool: PoolPath, body: BackendCreate, store: StoreDep, actor: WriterDep, response: Response
) -> BackendOut:
    await load_pool(store, pool)
    backend = body.to_backend(pool, await resolve_host(body.host, ""))
    backend_id = backend.id
    # Conflict (409) when the address is registered: checked in the write.
    await store.put_static(backend, actor=actor)
    metrics.ACTIONS.labels("static_registered").inc()
    log.info(
        "static backend registered pool=%s backend=%s addr=%s:%d weight=%d actor=%s",
        pool,
        backend_id,
        backend.ip,
        body.port,
        body.weight,
        actor,
    )
    response.headers["Location"] = f"/api/v1/pools/{pool}/backends/{backend_id}"
    return await _out(store, pool, backend_id)


@router.get("/{backend_id}", response_model=BackendOut, summary="Read one backend")
async def get(
    pool: PoolPath, backend_id: BackendPath, store: StoreDep, _reader: ReaderDep
) -> BackendOut:
    return await _out(store, pool, backend_id)


@router.put("/{backend_id}/weight", response_model=BackendOut, summary="Set a backend's weight")
async def set_weight(
    pool: PoolPath, backend_id: BackendPath, body: WeightChange, store: StoreDep, actor: WriterDep
) -> BackendOut:
    await _backend(store, pool, backend_id)
    await store.update_backend(
        pool, backend_id, actor=actor, kind="weight_changed", weight=body.weight
    )
    metrics.ACTIONS.labels("weight_changed").inc()
    log.info(
        "weight changed pool=%s backend=%s weight=%d actor=%s", pool, backend_id, body.weight, actor
    )
    return await _out(store, pool, backend_id)


async def _transition(
    transitions: t.BackendTransitions,
    store: PoolReads,
    pool: str,
    backend_id: str,
    transition: t.Transition,
    actor: str,
) -> BackendOut:
    await load_pool(store, pool)
    result = await transitions.apply(pool, backend_id, transition, actor=actor)
    if result.changed:
        metrics.ACTIONS.labels(transition.kind).inc()
        log.info(
            "backend %s pool=%s backend=%s from=%s actor=%s",
            transition.kind,
            pool,
            backend_id,
            result.previous,
            actor,
        )
    return await _out(store, pool, backend_id)


@router.post(
    "/{backend_id}/drain",
    summary="Drain: keep it registered, send it no new calls",
    responses=CONFLICT,
)
async def drain(
    pool: PoolPath, backend_id: BackendPath, store: StoreDep, tr: TransitionsDep, actor: WriterDep
) -> BackendOut:
    return await _transition(tr, store, pool, backend_id, t.DRAIN, actor)


@router.post(
    "/{backend_id}/undrain",
    summary="Undrain: put a draining backend back in lists",
    responses=CONFLICT,
)
async def undrain(
    pool: PoolPath, backend_id: BackendPath, store: StoreDep, tr: TransitionsDep, actor: WriterDep
) -> BackendOut:
    return await _transition(tr, store, pool, backend_id, t.UNDRAIN, actor)


@router.post(
    "/{backend_id}/disable",
    summary="Disable: hold it out, even across re-registration",
    responses=CONFLICT,
)
async def disable(
    pool: PoolPath, backend_id: BackendPath, store: StoreDep, tr: TransitionsDep, actor: WriterDep
) -> BackendOut:
    return await _transition(tr, store, pool, backend_id, t.DISABLE, actor)


@router.post("/{backend_id}/enable", summary="Enable a disabled backend", responses=CONFLICT)
async def enable(
    pool: PoolPath, backend_id: BackendPath, store: StoreDep, tr: TransitionsDep, actor: WriterDep
) -> BackendOut:
    return await _transition(tr, store, pool, backend_id, t.ENABLE, actor)


@router.post(
    "/{backend_id}/reinstate",
    summary="Reinstate: end an outlier ejection now",
    responses=CONFLICT,
)
async def reinstate(
    pool: PoolPath, backend_id: BackendPath, store: StoreDep, tr: TransitionsDep, actor: WriterDep
) -> BackendOut:
    return await _transition(tr, store, pool, backend_id, t.REINSTATE, actor)


@router.delete(
    "/{backend_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    response_class=Response,
    summary="Remove a backend from the registry",
)
async def remove(
    pool: PoolPath, backend_id: BackendPath, store: StoreDep, actor: WriterDep
) -> Response:
    await load_pool(store, pool)
    await store.remove_backend(pool, backend_id, actor=actor)
    metrics.ACTIONS.labels("removed").inc()
    log.info("backend removed pool=%s backend=%s actor=%s", pool, backend_id, actor)
    return Response(status_code=status.HTTP_204_NO_CONTENT)
