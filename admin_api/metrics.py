"""Prometheus metrics of the admin process, on its own registry, served at
/metrics by the app itself."""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from fastapi import Request, Response
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
)

log = logging.getLogger("lookaside.admin")

REGISTRY = CollectorRegistry(auto_describe=True)

REQUESTS = Counter(
    "lookaside_admin_requests",
    "HTTP requests by method, route template and status",
    ["method", "route", "status"],
    registry=REGISTRY,
)
LATENCY = Histogram(
    "lookaside_admin_request_seconds",
    "HTTP request latency by route template",
    ["method", "route"],
    registry=REGISTRY,
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0),
)
REDIS_ERRORS = Counter(
    "lookaside_admin_redis_errors",
    "requests answered 503 because Redis failed",
    registry=REGISTRY,
)
ACTIONS = Counter(
    "lookaside_admin_actions",
    "successful writes by kind (pool_created, drained, weight_changed, ...)",
    ["kind"],
    registry=REGISTRY,
)

BACKEND_CALLS = Counter(
    "lookaside_admin_backend_calls",
    "calls that thin clients reported finishing per backend, by result (received, lost), as "
    "this admin process's sampler read them from the running totals",
    ["pool", "backend", "result"],
    registry=REGISTRY,
)

KNOWN_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


# Served outside the OpenAPI document: template -> methods.
EXTRA_TEMPLATES = {"/": ("GET",), "/metrics": ("GET",), "/static/{path}": ("GET", "HEAD")}


@dataclass(frozen=True, slots=True)
class _Template:
    pattern: re.Pattern[str]
    path: str
    methods: tuple[str, ...]


def _templates(app: Any) -> list[_Template]:
    """Every path template the app serves, with its methods: the OpenAPI
    paths plus the pages outside the schema. Matching the URL against them
    works however the framework nests routers."""
    cached: list[_Template] | None = getattr(app.state, "route_templates", None)
    if cached is None:
        table = {
            path: tuple(sorted(m.upper() for m in ops if m.upper() in KNOWN_METHODS))
            for path, ops in app.openapi().get("paths", {}).items()
        }
        table.update(EXTRA_TEMPLATES)
        cached = []
        for template, methods in table.items():
            parts = re.split(r"(\{[^}]+\})", template)
            regex = "".join(
                (".+" if p == "{path}" else "[^/]+") if p.startswith("{") else re.escape(p)
                for p in parts
            )
            cached.append(_Template(re.compile(f"^{regex}$"), template, methods))
        app.state.route_templates = cached
    return cached


def _match(request: Request) -> _Template | None:
    path = request.url.path
    for template in _templates(request.app):
        if template.pattern.match(path):
            return template
    return None


def route_template(request: Request) -> str:
    """The path template a request went to, so labels stay few
    ("unmatched" for anything no route serves)."""
    found = _match(request)
    return found.path if found else "unmatched"


async def track_requests(
    request: Request, call_next: Callable[[Request], Awaitable[Response]]
) -> Response:
    start = time.perf_counter()
    method = request.method if request.method in KNOWN_METHODS else "OTHER"
    status = 500
    try:
        response = await call_next(request)
        status = response.status_code
        if status == 405:
            # Name every method of the path, not only those of one route.
            found = _match(request)
            if found is not None:
                response.headers["Allow"] = ", ".join(found.methods)
        return response
    finally:
        route = route_template(request)
        elapsed = time.perf_counter() - start
        REQUESTS.labels(method, route, str(status)).inc()
        LATENCY.labels(method, route).observe(elapsed)
        log.debug(
            "request method=%s route=%s path=%s status=%d ms=%.1f",
            method,
            route,
            request.url.path[:200],
            status,
            elapsed * 1000,
        )


def metrics_response() -> Response:
    return Response(generate_latest(REGISTRY), media_type=CONTENT_TYPE_LATEST)
