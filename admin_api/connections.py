"""Connections the admin API does not let anyone hold.

uvicorn's h11 protocol, with

- a header timeout: a connection must bring a complete request head within
  `header_timeout` seconds of opening (or of its first byte after a
  keep-alive pause), so a silent connection or a slow-header one is closed;
- a body timeout: the body must arrive within `body_timeout` seconds of the
  head (a slow-body client is cut off);
- caps on open connections, in all and per client address: a connection
  past either is answered 503 and closed at once.

uvicorn's own `timeout_keep_alive` closes an idle connection after a
response, and `h11_max_incomplete_event_size` bounds the request head.
Every closing counts in lookaside_admin_connections_refused_total{reason}.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Any

import h11
from prometheus_client import Counter
from uvicorn.protocols.http.h11_impl import H11Protocol

from admin_api.metrics import REGISTRY

log = logging.getLogger("lookaside.admin")

CONNECTIONS_REFUSED = Counter(
    "lookaside_admin_connections_refused",
    "connections closed by the admin API: header_timeout, body_timeout, "
    "max_connections, max_connections_per_address",
    ["reason"],
    registry=REGISTRY,
)
_BUSY = (
    b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: text/plain\r\n"
    b"connection: close\r\ncontent-length: %d\r\n\r\n%s"
)


@dataclass(frozen=True)
class ConnectionLimits:
    header_timeout: float = 10.0
    body_timeout: float = 30.0
    max_connections: int = 1000
    max_connections_per_address: int = 32


class GuardedH11Protocol(H11Protocol):
    """See the module docstring; `limits` is set by `guarded_protocol`."""

    limits = ConnectionLimits()

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._timer: asyncio.TimerHandle | None = None
        self._phase = ""
        refusal = self._refusal()
        if refusal:
            reason, message = refusal
            CONNECTIONS_REFUSED.labels(reason).inc()
            body = message.encode()
            transport.write(_BUSY % (len(body), body))
            transport.close()
            return
        self._arm("header_timeout", self.limits.header_timeout)

    def _refusal(self) -> tuple[str, str] | None:
        if len(self.connections) > self.limits.max_connections:
            return "max_connections", "too many connections to the admin API; try again later\n"
        host = self.client[0] if self.client else None
        if host is not None:
            peers = (getattr(c, "client", None) for c in self.connections)
            mine = sum(1 for peer in peers if peer and peer[0] == host)
            if mine > self.limits.max_connections_per_address:
                return (
                    "max_connections_per_address",
                    f"too many connections from {host}: at most "
                    f"{self.limits.max_connections_per_address} at once\n",
                )
        return None

    def _arm(self, phase: str, seconds: float) -> None:
        if self._phase == phase:
            return
        self._disarm()
        self._phase = phase
        self._timer = self.loop.call_later(seconds, self._expired, phase)

    def _disarm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer, self._phase = None, ""

    def _expired(self, phase: str) -> None:
        self._timer, self._phase = None, ""
        if self.transport.is_closing():
            return
        CONNECTIONS_REFUSED.labels(phase).inc()
        log.info("admin connection closed reason=%s client=%s", phase, self.client)
        self.transport.close()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self.transport.is_closing():
            return
        state = self.conn.their_state
        if state is h11.IDLE:
            self._arm("header_timeout", self.limits.header_timeout)
        elif state is h11.SEND_BODY:
            self._arm("body_timeout", self.limits.body_timeout)
        else:
            self._disarm()

    def connection_lost(self, exc: Exception | None) -> None:
        if getattr(self, "_timer", None) is not None:
            self._disarm()
        super().connection_lost(exc)


def guarded_protocol(limits: ConnectionLimits) -> type[GuardedH11Protocol]:
    """The protocol class for uvicorn.Config(http=...), with these limits."""
    return type("AdminH11Protocol", (GuardedH11Protocol,), {"limits": limits})


def uvicorn_options(limits: ConnectionLimits, keep_alive_timeout: float) -> dict[str, Any]:
    return {
        "http": guarded_protocol(limits),
        "timeout_keep_alive": keep_alive_timeout,
        # The request head (line and headers) may take at most 16 KiB.
        "h11_max_incomplete_event_size": 16 * 1024,
    }
