"""Request body size, checked before anything parses the body.

A pure ASGI middleware: a Content-Length above the limit is answered 413
at once, without reading a byte of the body (a request without a valid
token is refused 401 before it, by admin_api.gate);
a body without a length (chunked) is counted as it arrives and cut off
with 413 as soon as it passes the limit. Either way the process holds at
most `limit` bytes of one request.
"""

from __future__ import annotations

import json
from typing import Any

from prometheus_client import Counter

from admin_api.metrics import REGISTRY

DEFAULT_MAX_BODY_BYTES = 1 << 20

BODIES_REFUSED = Counter(
    "lookaside_admin_bodies_refused",
    "requests answered 413 because their body passed max_body_bytes",
    registry=REGISTRY,
)

Scope = dict[str, Any]


class BodyLimit:
    def __init__(self, app: Any, limit: int = DEFAULT_MAX_BODY_BYTES) -> None:
        self.app = app
        self.limit = limit

    async def _refuse(self, send: Any) -> None:
        BODIES_REFUSED.inc()
        body = json.dumps(
            {"detail": f"request body is larger than {self.limit} bytes; send a smaller one"}
        ).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 413,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                    (b"connection", b"close"),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for name, value in scope.get("headers", ()):
            if name == b"content-length":
                if not value.isdigit() or int(value) > self.limit:
                    await self._refuse(send)
                    return
        seen = 0
        started = refused = False

        async def counted_receive() -> Any:
            nonlocal seen, refused
            if refused:
                return {"type": "http.disconnect"}
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    # Answer now; the app sees the client gone and stops.
                    refused = True
                    if not started:
                        await self._refuse(send)
                    return {"type": "http.disconnect"}
            return message

        async def tracked_send(message: Any) -> None:
            nonlocal started
            if refused:
                return
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        await self.app(scope, counted_receive, tracked_send)
