"""One router per resource, mounted under /api/v1 by admin_api.app."""

from fastapi import APIRouter

from admin_api.routes import (
    backend_tokens,
    backends,
    events,
    load,
    pools,
    signals,
    state,
    streams,
)

api_router = APIRouter(prefix="/api/v1")
api_router.include_router(pools.router)
api_router.include_router(backends.router)
api_router.include_router(backend_tokens.router)
api_router.include_router(load.router)
api_router.include_router(events.router)
api_router.include_router(signals.router)
api_router.include_router(state.router)
api_router.include_router(streams.router)

__all__ = ["api_router"]
