"""/api/v1/pools/{pool}/backend-tokens: registration tokens bound to one
backend address each (lookaside_registry.tokens), for registrars that
register many backends. The holder of one may register that address only
(whatever the pool's address_policy), and the leases it takes are its own.
"""

from __future__ import annotations

import logging
from typing import Annotated

from fastapi import APIRouter, Path, Response, status

from admin_api import metrics
from admin_api.deps import PoolPath, ReaderDep, StoreDep, WriterDep
from admin_api.routes.pools import load_pool
from admin_api.schemas.backend_tokens import (
    BackendTokenCreate,
    BackendTokenList,
    BackendTokenMinted,
    BackendTokenOut,
)
from server_common.schemas.common import COMMON, NOT_FOUND

log = logging.getLogger("lookaside.admin")

router = APIRouter(
    prefix="/pools/{pool}/backend-tokens",
    tags=["backend-tokens"],
    responses={**COMMON, **NOT_FOUND},
)
TokenIdPath = Annotated[
    str, Path(pattern=r"^[0-9a-f]{12}$", description="a token's id (from the list)")
]


@router.get("", response_model=BackendTokenList, summary="List a pool's backend tokens")
async def list_(pool: PoolPath, store: StoreDep, _reader: ReaderDep) -> BackendTokenList:
    await load_pool(store, pool)
    tokens = await store.backend_tokens(pool)
    return BackendTokenList(pool=pool, tokens=[BackendTokenOut.from_record(t) for t in tokens])


@router.post(
    "",
    response_model=BackendTokenMinted,
    status_code=status.HTTP_201_CREATED,
    summary="Mint a registration token for one backend address",
)
async def mint(
    pool: PoolPath, body: BackendTokenCreate, store: StoreDep, actor: WriterDep
) -> BackendTokenMinted:
    # NotFound (404) when the pool does not exist: checked in the write.
    token, record = await store.mint_backend_token(pool, body.address, actor=actor)
    metrics.ACTIONS.labels("backend_token_minted").inc()
    log.info(
        "backend token minted pool=%s id=%s address=%s actor=%s",
        pool, record.id, record.address, actor,
    )  # fmt: skip
    return BackendTokenMinted(token=token, **BackendTokenOut.from_record(record).model_dump())


@router.delete(
    "/{token_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    response_class=Response,
    summary="Revoke a backend token",
)
async def revoke(
    pool: PoolPath, token_id: TokenIdPath, store: StoreDep, actor: WriterDep
) -> Response:
    await store.revoke_backend_token(pool, token_id, actor=actor)
    metrics.ACTIONS.labels("backend_token_revoked").inc()
    log.info("backend token revoked pool=%s id=%s actor=%s", pool, token_id, actor)
    return Response(status_code=status.HTTP_204_NO_CONTENT)
