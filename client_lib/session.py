"""The balancer session: an I/O-free state machine for one channel's
BalanceLoad streams, driven by the sync and asyncio channels alike.

Events go in (a stream opened, a LoadBalanceResponse, a stream end, the
fallback timer), actions come out (connect to an address after a delay, a
new list, enter fallback). Nothing here opens a socket, sleeps or reads a
clock: the driver passes `now` in and runs the actions.

Rules, as C-core's grpclb has them:
- balancers are tried in turn; a stream that fails before any response
  moves to the next address at once, and backoff (1 s, x1.6, jitter 0.2,
  at most 120 s) applies only once every address has failed in a row;
- a stream that delivered a list and then ended reconnects at once (to the
  next address), unless the previous one did the same less than a second
  ago, which counts as a failure (no hot reconnect loop);
- a list identical to the current one is ignored; an empty list is
  applied (no backends);
- `fallback_response`, no list within the fallback timeout, every
  balancer failing before the first list, or losing the balancer and every
  backend at once, enter fallback; a new list leaves it.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass

from client_lib._lb_proto import lb
from client_lib.backoff import Backoff
from client_lib.server_list import (
    INITIAL_REQUEST_NAME_MAX,
    ListEntry,
    parse_server_list,
    report_interval_seconds,
)

HOT_LOOP_WINDOW = 1.0  # a list-then-end stream within this of the last one is a failure


class Fallback(enum.Enum):
    """The one record of fallback: the channel's core reads it from here."""

    OFF = "following the balancer"  # or waiting for its first list
    ACTIVE = "in fallback"  # fallback targets serve, if any were given


class Stream(enum.Enum):
    """The open BalanceLoad stream, as far as the session knows it."""

    SILENT = "opened, no answer yet"  # also: no stream open
    ANSWERED = "answered, no list yet"
    LISTED = "delivered a list"


@dataclass(frozen=True, slots=True)
class Connect:
    """Open a BalanceLoad stream to `address` after `delay` seconds."""

    address: str
    delay: float


@dataclass(frozen=True, slots=True)
class NewList:
    entries: tuple[ListEntry, ...]


@dataclass(frozen=True, slots=True)
class EnterFallback:
    reason: str


@dataclass(frozen=True, slots=True)
class StartReports:
    interval: float


Action = NewList | EnterFallback | StartReports


def check_arguments(target: str, balancers: str | Sequence[str]) -> list[str]:
    """The balancer list; ValueError naming what is wrong with the target or
    the balancers (refused in the constructor, before any I/O)."""
    if not target:
        raise ValueError("target is empty: give the service (pool) name the balancer knows")
    size = len(target.encode())
    if size > INITIAL_REQUEST_NAME_MAX:
        raise ValueError(
            f"target is {size} bytes; grpclb names must be at most "
            f"{INITIAL_REQUEST_NAME_MAX} bytes (use the pool name)"
        )
    addrs = [balancers] if isinstance(balancers, str) else list(balancers)
    addrs = [a.strip() for a in addrs if a and a.strip()]
    if not addrs:
        raise ValueError("no balancer address: give at least one host:port")
    return addrs


class BalancerSession:
    def __init__(
        self,
        target: str,
        balancers: str | Sequence[str],
        *,
        fallback_timeout: float = 10.0,
        backoff: Backoff | None = None,
    ) -> None:
        self.target = target
        self.balancers = check_arguments(target, balancers)
        self.fallback_timeout = fallback_timeout
        self.backoff = backoff or Backoff()
        self._index = -1
        self._failures_in_row = 0
        self._last_good_end: float | None = None
        self._list_raw: bytes | None = None
        self.fallback_deadline: float | None = None
        self.connected_to = ""  # the balancer whose stream answered, "" while none
        self.streams_opened = 0
        self.lists_received = 0
        self.fallback = Fallback.OFF
        self.have_list = False
        self.report_interval = 0.0
        self.stream = Stream.SILENT
        self.last_error = ""

    def initial_request(self) -> bytes:
        return lb.LoadBalanceRequest(
            initial_request=lb.InitialLoadBalanceRequest(name=self.target)
        ).SerializeToString()

    # -- events ----------------------------------------------------------------

    def start(self, now: float) -> Connect:
        self.fallback_deadline = now + self.fallback_timeout
        return self._next(0.0)

    def stream_opened(self, address: str) -> None:
        self.streams_opened += 1
        self.stream = Stream.SILENT
        self.report_interval = 0.0

    def response(self, message: lb.LoadBalanceResponse, address: str) -> list[Action]:
        kind = message.WhichOneof("load_balance_response_type")
        actions: list[Action] = []
        if self.stream is Stream.SILENT:
            self.stream = Stream.ANSWERED
            self.connected_to = address
        if kind == "initial_response":
            self.report_interval = report_interval_seconds(message.initial_response)
        elif kind == "server_list":
            first_on_stream = self.stream is not Stream.LISTED
            self.stream = Stream.LISTED
            self._failures_in_row = 0
            self.backoff.reset()
            if first_on_stream and self.report_interval:
                actions.append(StartReports(self.report_interval))
            raw = message.server_list.SerializeToString()
            if raw != self._list_raw or self.fallback is Fallback.ACTIVE:
                self._list_raw = raw
                self.lists_received += 1
                self.have_list = True
                self.fallback = Fallback.OFF
                self.fallback_deadline = None
                actions.append(NewList(tuple(parse_server_list(message.server_list))))
        elif kind == "fallback_response":
            actions += self._fallback("the balancer sent fallback_response")
        return actions

    def stream_ended(self, now: float, error: str = "") -> tuple[Connect, list[Action]]:
        """The stream ended (an error, a status, or the balancer went away).
        Returns where to connect next and any fallback to enter."""
        self.connected_to = ""
        self.last_error = error
        good = self.stream is Stream.LISTED
        if good and (self._last_good_end is None or now - self._last_good_end > HOT_LOOP_WINDOW):
            self._last_good_end = now
            self._failures_in_row = 0
            return self._next(0.0), []
        self._failures_in_row += 1
        actions: list[Action] = []
        if self._failures_in_row % len(self.balancers):
            return self._next(0.0), actions
        if not self.have_list:
            actions += self._fallback(f"every balancer failed ({error or 'no answer'})")
        return self._next(self.backoff.next()), actions

    def fallback_timer(self, now: float) -> list[Action]:
        """Call when now reaches fallback_deadline. When the stream open
        now has not answered at all, the driver should also end it
        (`abandon_silent_stream`), so the next balancer gets its turn."""
        if self.fallback_deadline is None or now < self.fallback_deadline:
            return []
        self.fallback_deadline = None
        if self.have_list:
            return []
        return self._fallback(f"no server list within {self.fallback_timeout:g}s")

    @property
    def abandon_silent_stream(self) -> bool:
        """The open stream never answered and no list is in: give it up."""
        return self.stream is Stream.SILENT and not self.have_list

    def backends_unreachable(self) -> list[Action]:
        """Every listed backend is in TRANSIENT_FAILURE: with no balancer
        stream up either, enter fallback (C-core does the same)."""
        if self.connected_to or not self.have_list:
            return []
        return self._fallback("lost the balancer and every backend")

    @property
    def in_fallback(self) -> bool:
        return self.fallback is Fallback.ACTIVE

    # -- helpers -----------------------------------------------------------------

    def _fallback(self, reason: str) -> list[Action]:
        self.fallback_deadline = None
        if self.fallback is Fallback.ACTIVE:
            return []
        self.fallback = Fallback.ACTIVE
        return [EnterFallback(reason)]

    def _next(self, delay: float) -> Connect:
        self._index = (self._index + 1) % len(self.balancers)
        return Connect(self.balancers[self._index], delay)
