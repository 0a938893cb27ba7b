"""The token, checked before anything reads the request body.

FastAPI reads and parses a route's body before it runs the route's
dependencies, so a request without the token would have its body read
(and its JSON parsed) before the 401. This ASGI middleware runs first: a
request to /api/... or /metrics that needs the token and does not carry it
is answered 401 at once, its body never asked for, and the connection
closed. The routes check the token again (admin_api.deps).
"""

from __future__ import annotations

import json
from typing import Any

from prometheus_client import Counter

from admin_api.deps import token_problem
from admin_api.metrics import REGISTRY
from admin_api.settings import AdminSettings

UNAUTHORIZED = Counter(
    "lookaside_admin_unauthorized",
    "requests answered 401 before their body was read",
    registry=REGISTRY,
)
READS = ("GET", "HEAD")


class TokenGate:
    def __init__(self, app: Any, settings: AdminSettings) -> None:
        self.app = app
        self.settings = settings

    def needs_token(self, method: str, path: str) -> bool:
        if not (path.startswith("/api/") or path == "/metrics"):
            return False
        return not (self.settings.public_reads and method in READS)

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http" or not self.needs_token(scope["method"], scope["path"]):
            await self.app(scope, receive, send)
            return
        header = next((v for k, v in scope.get("headers", ()) if k == b"authorization"), None)
        problem = token_problem(self.settings, header)
        if problem is None:
            await self.app(scope, receive, send)
            return
        UNAUTHORIZED.inc()
        body = json.dumps({"detail": problem}).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 401,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                    (b"www-authenticate", b"Bearer"),
                    (b"connection", b"close"),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})
