"""Limits against abuse that the balancer keeps in memory.

- RateLimitedLog: a log line per kind at most once per interval; the lines
  held back are counted into the next one. A client that sends garbage as
  fast as it can gets one line a few seconds, not one per message.
- StreamsPerAddress: open BalanceLoad streams per client network
  (`client_network`: an IPv4 address, an IPv6 /64).
- ReportPacer: a stream's reports may come no faster than the interval the
  balancer asked for (with slack); faster ones are dropped and counted.
"""

from __future__ import annotations

import ipaddress
import logging
import time
import urllib.parse
from collections.abc import Callable
from typing import Any

LOG_INTERVAL_S = 10.0
# A report may come this much earlier than the interval asked for (client
# timers and network jitter); C-core clamps the interval to at least 1 s.
REPORT_SLACK = 0.5
MIN_REPORT_INTERVAL_MS = 1000
REPORT_BURST = 5


async def refuse_stream(
    context: Any,
    log: RateLimitedLog,
    counter: Any,
    what: str,
    reason: str,
    details: str,
    code: Any,
) -> None:
    """Ends a refused stream (BalanceLoad, ADS, LRS): counted per reason in
    `counter`, one rate-limited line per protocol and reason, and `code`
    with `details` to the client."""
    counter.labels(reason).inc()
    log.warning(
        f"{what}:{reason}",
        "%s refused reason=%s peer=%s: %s",
        what,
        reason,
        context.peer(),
        details,
    )
    await context.abort(code, details)


class RateLimitedLog:
    def __init__(
        self,
        logger: logging.Logger,
        interval: float = LOG_INTERVAL_S,
        clock: Callable[[], float] = time.monotonic,
        max_kinds: int = 256,
    ) -> None:
        self.logger = logger
        self.interval = interval
        self.clock = clock
        self.max_kinds = max_kinds
        self._last: dict[str, float] = {}
        self._held: dict[str, int] = {}

    def warning(self, kind: str, msg: str, *args: Any) -> bool:
        """Logs unless a line of this kind went out less than `interval`
        ago; returns whether it logged."""
        now = self.clock()
        last = self._last.get(kind)
        if last is not None and now - last < self.interval:
            self._held[kind] = self._held.get(kind, 0) + 1
            return False
        if last is None and len(self._last) >= self.max_kinds:
            self._last.clear()  # bounded memory whatever the kinds
            self._held.clear()
        held = self._held.pop(kind, 0)
        self._last[kind] = now
        if held:
            msg += " (%d more like it not logged)"
            args = (*args, held)
        self.logger.warning(msg, *args)
        return True


def peer_address(peer: str) -> str:
    """The IP of a gRPC peer string ("ipv4:1.2.3.4:5", "ipv6:[::1]:5",
    grpc also writes "ipv6:%5B::1%5D:5"), else the string's scheme (unix
    sockets and the like share one bucket)."""
    kind, _, rest = peer.partition(":")
    if kind in ("ipv4", "ipv6"):
        return urllib.parse.unquote(rest).rsplit(":", 1)[0].strip("[]")
    return kind


IPV6_CLIENT_PREFIX = 64


def peer_ip(peer: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """The IP of a gRPC peer string, an IPv4-mapped IPv6 address as its
    IPv4 address (no zone id); None for a peer that is no IP (a unix socket)."""
    try:
        ip = ipaddress.ip_address(peer_address(peer).partition("%")[0])
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


def client_network(peer: str) -> str:
    """What one client is, for limits by address: an IPv4 address (an
    IPv4-mapped IPv6 address is its IPv4 address), or the /64 of an IPv6
    address (one host usually holds a whole /64, so counting addresses
    apart would let it open as many streams as it likes)."""
    ip = peer_ip(peer)
    if ip is None:
        return peer_address(peer)
    if isinstance(ip, ipaddress.IPv6Address):
        return str(ipaddress.IPv6Network((ip, IPV6_CLIENT_PREFIX), strict=False))
    return str(ip)


class StreamsPerAddress:
    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.open: dict[str, int] = {}

    def acquire(self, address: str) -> bool:
        n = self.open.get(address, 0)
        if n >= self.limit:
            return False
        self.open[address] = n + 1
        return True

    def release(self, address: str) -> None:
        n = self.open.get(address, 0) - 1
        if n <= 0:
            self.open.pop(address, None)
        else:
            self.open[address] = n


class ReportPacer:
    """Admits a stream's reports at the interval the balancer asked for:
    a token bucket that refills one report per interval (with slack) and
    holds at most REPORT_BURST, so a client may catch up after a pause but
    cannot report faster than asked for long."""

    __slots__ = ("clock", "last", "credit", "refilled", "burst")

    def __init__(
        self, clock: Callable[[], float] = time.monotonic, burst: int = REPORT_BURST
    ) -> None:
        self.clock = clock
        self.burst = float(burst)
        self.last: float | None = None
        self.credit = self.burst
        self.refilled = clock()

    def admit(self, interval_ms: int) -> bool:
        now = self.clock()
        interval = max(interval_ms, MIN_REPORT_INTERVAL_MS) / 1000 * REPORT_SLACK
        self.credit = min(self.burst, self.credit + (now - self.refilled) / interval)
        self.refilled = now
        if self.credit < 1.0:
            return False
        self.credit -= 1.0
        self.last = now
        return True
