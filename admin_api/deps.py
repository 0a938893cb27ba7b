"""Dependencies of the routes, as `Annotated` aliases.

StoreDep        the app's registry store (lookaside_registry.port.AdminPort)
WriterDep       the actor of a mutating call; 401 without the right token
ReaderDep       the same for reads, unless public_reads is set
PoolPath        a pool name from the path, checked like the registry does
BackendPath     a backend id from the path
"""

from __future__ import annotations

import secrets
from typing import Annotated

from fastapi import Depends, HTTPException, Path, Request
from fastapi.exceptions import RequestValidationError
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from admin_api.settings import AdminSettings
from lookaside_registry import validation as v
from lookaside_registry.port import AdminPort
from lookaside_registry.transitions import BackendTransitions

BACKEND_ID_PATTERN = r"^[A-Za-z0-9._:-]{1,64}$"

bearer = HTTPBearer(
    auto_error=False,
    scheme_name="bearerAuth",
    description="the admin token (LOOKASIDE_ADMIN_TOKEN)",
)


def get_settings(request: Request) -> AdminSettings:
    settings: AdminSettings = request.app.state.settings
    return settings


def get_store(request: Request) -> AdminPort:
    store: AdminPort = request.app.state.store
    return store


def get_transitions(request: Request) -> BackendTransitions:
    transitions: BackendTransitions = request.app.state.transitions
    return transitions


SettingsDep = Annotated[AdminSettings, Depends(get_settings)]
StoreDep = Annotated[AdminPort, Depends(get_store)]
TransitionsDep = Annotated[BackendTransitions, Depends(get_transitions)]
Credentials = Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]


def _unauthorized(detail: str) -> HTTPException:
    return HTTPException(status_code=401, detail=detail, headers={"WWW-Authenticate": "Bearer"})


def _actor(request: Request) -> str:
    client = request.client.host if request.client else "unknown"
    return f"admin:token@{client}"


MISSING_TOKEN = "missing bearer token: send 'Authorization: Bearer <admin token>'"
WRONG_TOKEN = "wrong bearer token"


def token_problem(settings: AdminSettings, authorization: bytes | None) -> str | None:
    """Why an Authorization header value does not carry the admin token, or
    None when it does (compared in constant time)."""
    scheme, _, given = (authorization or b"").strip().partition(b" ")
    if scheme.lower() != b"bearer" or not given.strip():
        return MISSING_TOKEN
    if not secrets.compare_digest(given.strip(), settings.token.encode()):
        return WRONG_TOKEN
    return None


def check_token(settings: AdminSettings, credentials: HTTPAuthorizationCredentials | None) -> None:
    if credentials is None:
        raise _unauthorized(MISSING_TOKEN)
    given = credentials.credentials.encode("utf-8", "surrogateescape")
    if not secrets.compare_digest(given, settings.token.encode()):
        raise _unauthorized(WRONG_TOKEN)


def require_writer(request: Request, settings: SettingsDep, credentials: Credentials) -> str:
    """The actor name of an authorized mutating call."""
    check_token(settings, credentials)
    return _actor(request)


def require_reader(request: Request, settings: SettingsDep, credentials: Credentials) -> str:
    """The actor name of an authorized read (anyone when public_reads is set)."""
    if not settings.public_reads:
        check_token(settings, credentials)
    return _actor(request)


WriterDep = Annotated[str, Depends(require_writer)]
ReaderDep = Annotated[str, Depends(require_reader)]

PoolPath = Annotated[
    str,
    Path(
        min_length=1,
        max_length=128,
        pattern=v.POOL_NAME_RE.pattern,
        description="pool name: 1..128 characters of [A-Za-z0-9._-], starting with a letter or digit",
    ),
]
BackendPath = Annotated[
    str,
    Path(
        min_length=1,
        max_length=64,
        pattern=BACKEND_ID_PATTERN,
        description="backend id, as listed by backends-list",
    ),
]


def reject_unknown_query(request: Request) -> None:
    """Refuses query parameters a route does not take, and any given more
    than once (422), so a typo such as `?forced=true` or a stray second
    `limit` is an error rather than silently ignored."""
    route = request.scope.get("route")
    dependant = getattr(route, "dependant", None)
    if dependant is None or not request.query_params:
        return
    known: set[str] = set()
    stack = [dependant]
    while stack:
        d = stack.pop()
        known.update(p.alias for p in getattr(d, "query_params", ()))
        stack.extend(getattr(d, "dependencies", ()))
    repeated = sorted({k for k in request.query_params if len(request.query_params.getlist(k)) > 1})
    if repeated:
        raise RequestValidationError(
            [
                {
                    "loc": ("query", name),
                    "msg": f"given {len(request.query_params.getlist(name))} times; give it once",
                    "type": "repeated",
                }
                for name in repeated[:5]
            ]
        )
    unknown = sorted({k for k in request.query_params if k not in known})
    if unknown:
        expected = ", ".join(sorted(known)) or "none"
        raise RequestValidationError(
            [
                {
                    "loc": ("query", name),
                    "msg": f"unknown query parameter (this operation takes: {expected})",
                    "type": "extra_forbidden",
                }
                for name in unknown[:5]
            ]
        )
