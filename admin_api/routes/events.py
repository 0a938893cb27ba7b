"""/api/v1/pools/{pool}/events: the pool's bounded event log, newest first."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from admin_api.deps import PoolPath, ReaderDep, StoreDep
from admin_api.routes.pools import load_pool
from admin_api.schemas.events import EventList, EventOut
from lookaside_registry import keys
from server_common.schemas.common import COMMON, NOT_FOUND

router = APIRouter(
    prefix="/pools/{pool}/events", tags=["events"], responses={**COMMON, **NOT_FOUND}
)


@router.get("", response_model=EventList, summary="A pool's recent events")
async def list_(
    pool: PoolPath,
    store: StoreDep,
    _reader: ReaderDep,
    limit: Annotated[
        int, Query(ge=1, le=keys.EVENTS_MAX, description="how many events, newest first")
    ] = 100,
) -> EventList:
    await load_pool(store, pool)
    raw = await store.events(pool, limit)
    return EventList(pool=pool, events=[EventOut.from_raw(e) for e in raw if isinstance(e, dict)])
