"""The admin FastAPI application: routes, error handlers, metrics, the
dashboard's static files."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from importlib.metadata import PackageNotFoundError, version

from fastapi import Depends, FastAPI
from fastapi.routing import APIRoute
from fastapi.staticfiles import StaticFiles

from admin_api import docs, errors, metrics
from admin_api.deps import reject_unknown_query
from admin_api.gate import TokenGate
from admin_api.limits import BodyLimit
from admin_api.routes import api_router, dashboard, health
from admin_api.settings import AdminSettings
from lookaside_registry.port import AdminPort
from lookaside_registry.store import RegistryStore
from lookaside_registry.transitions import BackendTransitions

log = logging.getLogger("lookaside.admin")

DESCRIPTION = """\
Pools, backends, load reports and events of the Lookaside registry.

Every write goes to Redis as one atomic script that bumps the pool's
version and publishes the change; the balancers pick it up from there.
Send the admin token as `Authorization: Bearer <token>`.
"""


def _version() -> str:
    """The installed distribution's version (the admin API's OpenAPI `version`)."""
    try:
        return version("lookaside-grpclb")
    except PackageNotFoundError:
        return "unknown"


def operation_id(route: APIRoute) -> str:
    """`<tag>-<function name>`, e.g. pools-create, backends-set-weight."""
    tag = str(route.tags[0]) if route.tags else "admin"
    return f"{tag}-{route.name.rstrip('_').replace('_', '-')}"


def create_app(settings: AdminSettings, store: AdminPort | None = None) -> FastAPI:
    """The app over `store` (either adapter of the registry port). Without
    one, a RegistryStore is made from settings.redis_url (no connection is
    opened until the first request) and closed on shutdown."""
    owned = store is None
    if store is None:
        store = RegistryStore.from_url(settings.redis_url, cluster=settings.redis_cluster)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield
        if owned:
            await store.close()

    app = FastAPI(
        title="Lookaside admin API",
        version=_version(),
        description=DESCRIPTION,
        generate_unique_id_function=operation_id,
        lifespan=lifespan,
        docs_url=None,  # served from local files below, when installed
        redoc_url=None,
        openapi_url="/openapi.json",
    )
    app.state.settings = settings
    app.state.store = store
    app.state.transitions = BackendTransitions(store)
    errors.install(app)
    app.middleware("http")(metrics.track_requests)
    app.include_router(api_router, dependencies=[Depends(reject_unknown_query)])
    app.include_router(health.router)
    app.include_router(dashboard.router)
    app.mount("/static", StaticFiles(directory=dashboard.STATIC_DIR), name="static")
    docs.install(app)
    # The body's size is checked before routing or parsing; before that,
    # outermost, the token (no body is read for a request without it).
    app.add_middleware(BodyLimit, limit=settings.max_body_bytes)
    app.add_middleware(TokenGate, settings=settings)
    return app
