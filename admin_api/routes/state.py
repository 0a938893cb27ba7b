"""/api/v1/state: the operator state as one document (lookaside.declarative).

GET exports pools, their settings, static backends and holds; POST applies
such a document (idempotent: what is already so is not written; nothing
the document does not mention is removed).
"""

from __future__ import annotations

import logging

from fastapi import APIRouter
from pydantic import BaseModel, Field

from admin_api import metrics
from admin_api.deps import ReaderDep, StoreDep, WriterDep
from admin_api.schemas.common import COMMON, CONFLICT
from lookaside import declarative as d

log = logging.getLogger("lookaside.admin")

router = APIRouter(prefix="/state", tags=["state"], responses=COMMON)


class PendingHold(BaseModel):
    pool: str
    address: str


class ApplyOut(BaseModel):
    changes: list[str] = Field(description="what was written; empty when nothing had to change")
    pending_holds: list[PendingHold] = Field(
        description="holds whose backend is not registered yet (applied once it registers by "
        "a balancer or admin started with --state-file)"
    )


@router.get("", response_model=d.StateDocument, summary="Export the operator state")
async def export(store: StoreDep, _reader: ReaderDep) -> d.StateDocument:
    return await d.export(store)


@router.post(
    "",
    response_model=ApplyOut,
    summary="Apply an operator state (idempotent)",
    responses=CONFLICT,
)
async def apply(body: d.StateDocument, store: StoreDep, actor: WriterDep) -> ApplyOut:
    result = await d.apply(store, body, actor=actor)
    if result.changes:
        metrics.ACTIONS.labels("state_applied").inc()
    log.info(
        "state applied actor=%s pools=%d changes=%d pending_holds=%d",
        actor,
        len(body.pools),
        len(result.changes),
        len(result.pending),
    )
    return ApplyOut(
        changes=result.changes,
        pending_holds=[PendingHold(pool=p, address=a) for p, a in result.pending],
    )
