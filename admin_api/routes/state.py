"""/api/v1/state: the operator state as one document (server_common.declarative).

GET exports pools, their settings, static backends and holds; POST applies
such a document: it merges (a pool's `config` is a JSON merge patch over its
settings), is idempotent (what is already so is not written), removes
nothing the document leaves out unless `prune=true`, and answers with every
change, old -> new; with `dry_run=true` it writes nothing.
"""

from __future__ import annotations

import logging
from typing import Annotated

from fastapi import APIRouter, HTTPException, Query
from pydantic import BaseModel, Field

from admin_api import metrics
from admin_api.deps import ReaderDep, StoreDep, WriterDep
from server_common import declarative as d
from server_common.schemas.common import COMMON, CONFLICT

log = logging.getLogger("lookaside.admin")

router = APIRouter(prefix="/state", tags=["state"], responses=COMMON)


class PendingHold(BaseModel):
    pool: str
    address: str


class ApplyOut(BaseModel):
    changes: list[str] = Field(
        description="every change, `key: old -> new` (with dry_run: what would be written); "
        "empty when nothing had to change"
    )
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
    summary="Apply an operator state (merges; idempotent)",
    responses=CONFLICT,
)
async def apply(
    body: d.StateDocument,
    store: StoreDep,
    actor: WriterDep,
    dry_run: Annotated[
        bool, Query(description="list the changes, old -> new, and write nothing")
    ] = False,
    prune: Annotated[
        bool,
        Query(
            description="also remove what the document leaves out of the pools it names: "
            "settings not named go back to their defaults, unlisted static backends are "
            "removed, unlisted holds are lifted"
        ),
    ] = False,
) -> ApplyOut:
    try:
        result = await d.apply(store, body, actor=actor, prune=prune, dry_run=dry_run)
    except d.StateError as exc:
        raise HTTPException(status_code=422, detail=str(exc)) from None
    if dry_run:
        return ApplyOut(
            changes=result.changes,
            pending_holds=[PendingHold(pool=p, address=a) for p, a in result.pending],
        )
    if result.changes:
        metrics.ACTIONS.labels("state_applied").inc()
    log.info(
        "state applied actor=%s pools=%d prune=%s changes=%d pending_holds=%d: %s",
        actor,
        len(body.pools),
        prune,
        len(result.changes),
        len(result.pending),
        "; ".join(result.changes) or "none",
    )
    return ApplyOut(
        changes=result.changes,
        pending_holds=[PendingHold(pool=p, address=a) for p, a in result.pending],
    )
