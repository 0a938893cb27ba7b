"""Exception handlers: every failure becomes a Problem body with the right
status, never a 500.

    InvalidInput, request validation    422
    NotFound                            404
    Conflict (and every registry        409 (a lost compare-and-set also
      conflict: version, transition)        carries current_version)
    Unavailable (Redis unreachable)     503
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from admin_api import metrics
from lookaside_registry import errors as registry

log = logging.getLogger("lookaside.admin")

MAX_LISTED_ERRORS = 10


# The request is valid but clashes with the registry's current state.
Conflict = registry.Conflict


def problem(status: int, detail: str, **extra: Any) -> JSONResponse:
    return JSONResponse({"detail": detail, **extra}, status_code=status)


def _loc(loc: tuple[Any, ...] | list[Any]) -> list[str | int]:
    return [p if isinstance(p, int) else str(p) for p in loc]


def _message(msg: str) -> str:
    # Pydantic prefixes messages of custom validators with "Value error, ".
    return msg.removeprefix("Value error, ")


async def _validation(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    errors = [
        {
            "loc": _loc(e.get("loc", ())),
            "msg": _message(str(e.get("msg", ""))),
            "type": str(e.get("type", "")),
        }
        for e in exc.errors()[:MAX_LISTED_ERRORS]
    ]
    parts = []
    for e in errors:
        where = ".".join(str(p) for p in e["loc"])
        parts.append(f"{where}: {e['msg']}" if where else str(e["msg"]))
    detail = "invalid request: " + "; ".join(parts) if parts else "invalid request"
    return problem(422, detail, errors=errors)


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    if exc.status_code == 400:
        # FastAPI's answer to a body it cannot decode: for us, invalid input.
        return problem(422, f"invalid request: {exc.detail}; send a UTF-8 JSON body", errors=[])
    return JSONResponse({"detail": exc.detail}, status_code=exc.status_code, headers=exc.headers)


async def _registry_error(request: Request, exc: Exception) -> JSONResponse:
    return problem(422, str(exc), errors=[])


async def _not_found(request: Request, exc: Exception) -> JSONResponse:
    return problem(404, str(exc))


async def _conflict(request: Request, exc: Exception) -> JSONResponse:
    if isinstance(exc, registry.VersionConflict):
        return problem(409, str(exc), current_version=exc.current_version)
    return problem(409, str(exc))


async def _unavailable(request: Request, exc: Exception) -> JSONResponse:
    metrics.REDIS_ERRORS.inc()
    log.warning("redis unavailable path=%s error=%s", request.url.path, exc)
    return problem(
        503,
        f"registry unavailable: {exc}; "
        "check LOOKASIDE_ADMIN_REDIS_URL and that Redis is up, then retry",
    )


def install(app: FastAPI) -> None:
    app.add_exception_handler(RequestValidationError, _validation)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(registry.InvalidInput, _registry_error)
    app.add_exception_handler(registry.NotFound, _not_found)
    app.add_exception_handler(registry.Conflict, _conflict)
    app.add_exception_handler(registry.Unavailable, _unavailable)
    app.add_exception_handler(ConnectionError, _unavailable)
    app.add_exception_handler(TimeoutError, _unavailable)
