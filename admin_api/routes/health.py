"""/healthz (the process is alive), /readyz (Redis answers) and /metrics.

The probes need no token (probes carry none); /metrics needs the token
(a reader's: public with public_reads), as every other read does:
Prometheus sends it with `authorization: {credentials_file: ...}`.
"""

from __future__ import annotations

import asyncio
import logging

from fastapi import APIRouter, Response
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from admin_api import metrics
from admin_api.deps import ReaderDep, StoreDep
from lookaside_registry.errors import Unavailable

log = logging.getLogger("lookaside.admin")

READY_TIMEOUT = 2.0

router = APIRouter(tags=["health"])


class Status(BaseModel):
    status: str = Field(description="ok, or unavailable")
    detail: str = ""


@router.get("/healthz", response_model=Status, summary="Liveness")
async def live() -> Status:
    return Status(status="ok")


@router.get(
    "/readyz",
    response_model=Status,
    responses={503: {"model": Status, "description": "Redis does not answer"}},
    summary="Readiness: Redis answers",
)
async def ready(store: StoreDep) -> Status | JSONResponse:
    try:
        await asyncio.wait_for(store.ping(), timeout=READY_TIMEOUT)
    except (Unavailable, TimeoutError) as exc:
        log.warning("not ready: redis error=%s", exc or type(exc).__name__)
        body = Status(
            status="unavailable", detail=f"Redis does not answer: {exc or type(exc).__name__}"
        )
        return JSONResponse(body.model_dump(), status_code=503)
    return Status(status="ok")


@router.get("/metrics", include_in_schema=False)
async def prometheus(_reader: ReaderDep) -> Response:
    return metrics.metrics_response()
