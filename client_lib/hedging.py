"""Hedged calls (gRFC A6 `hedgingPolicy`), I/O-free: the policy read from a
method config of the `grpc.service_config` channel option, and one call's
decisions: when the next attempt starts, on which backend, and which
outcome ends the call. client_lib.attempts.HedgedAttempts runs it for
the sync and asyncio drivers (client_lib.calls, client_lib.aio_calls),
which start, wait for and cancel the attempts; nothing
here sleeps, reads a clock or touches a socket.

    "methodConfig": [{
        "name": [{"service": "routeguide.RouteGuide", "method": "GetFeature"}],
        "hedgingPolicy": {
            "maxAttempts": 3, "hedgingDelay": "0.05s",
            "nonFatalStatusCodes": ["UNAVAILABLE"],
        },
    }]

As gRFC A6 says: the first attempt starts at once and one more every
`hedgingDelay` (all at once for "0s") while no answer is in, up to
`maxAttempts` (at most 5); the first OK, or the first status not in
`nonFatalStatusCodes`, ends the call and the other attempts are cancelled;
a non-fatal failure starts the next attempt at once (after the server's
`grpc-retry-pushback-ms` if it sent one; a negative one stops new
attempts); with `retryThrottling`, attempts after the first start only
while the channel has more than half its tokens, each non-fatal failure
takes a token and each OK call gives back `tokenRatio`; all attempts share
the call's one deadline. A method config has a retry or a hedging policy,
never both. Here each new attempt goes to a READY backend that this call
has not tried yet when there is one, so a backend that holds calls without
answering costs a hedged call only `hedgingDelay`. Hedged are unary-unary
calls: blocking ones on the sync channel (not `.future()`), every one on
the asyncio channel; `"grpc.enable_retries": 0` turns hedging off too.
Only methods that are safe to run more than once should be hedged.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import grpc

from client_lib.picker import Pick
from client_lib.service_config import (
    ServiceConfigError,
    duration,
    max_attempts,
    pushback_seconds,
    status_code,
)

__all__ = ["Hedge", "HedgingPolicy"]

OK = grpc.StatusCode.OK


@dataclass(frozen=True, slots=True)
class HedgingPolicy:
    max_attempts: int
    delay: float  # seconds between attempts; 0: all at once
    non_fatal: frozenset[grpc.StatusCode]

    @classmethod
    def parse(cls, raw: Any, where: str) -> HedgingPolicy:
        if not isinstance(raw, dict):
            raise ServiceConfigError(f"{where} must be an object")
        attempts = max_attempts(raw, where)
        delay = raw.get("hedgingDelay", "0s")
        codes = raw.get("nonFatalStatusCodes", [])
        if not isinstance(codes, list):
            raise ServiceConfigError(f"{where}.nonFatalStatusCodes must be a list")
        return cls(
            max_attempts=attempts,
            delay=duration(delay, f"{where}.hedgingDelay", zero=True),
            non_fatal=frozenset(status_code(c, f"{where}.nonFatalStatusCodes") for c in codes),
        )


class Hedge:
    """One hedged call's decisions. The driver starts the first attempt on
    its usual pick and reports it with started(); then, until ended()
    returns True, it waits for an attempt to end or for wake_at(), and
    when due(now) asks choose() for the next backend (or postpone()s)."""

    __slots__ = ("policy", "throttle", "deadline", "tried", "in_flight", "next_at", "_budget")

    def __init__(self, policy: HedgingPolicy, throttle: Any, deadline: float | None) -> None:
        self.policy = policy
        self.throttle = throttle  # client_lib.retry.Throttle, or None
        self.deadline = deadline  # on the driver's clock; None: no deadline
        self.tried: list[str] = []  # backend addresses, in the order attempted
        self.in_flight = 0
        self.next_at: float | None = None  # when another attempt may start; None: never
        self._budget = policy.max_attempts  # one more for an attempt that was never sent

    def started(self, address: str, now: float) -> None:
        self.tried.append(address)
        self.in_flight += 1
        self.next_at = now + self.policy.delay if len(self.tried) < self._budget else None

    def wake_at(self) -> float | None:
        """When the driver should look again if no attempt ends first."""
        if self.next_at is None:
            return None
        if self.deadline is None:
            return self.next_at
        return min(self.next_at, self.deadline)

    def due(self, now: float) -> bool:
        """Whether another attempt starts now: its time has come, the call's
        deadline has not, and the throttle (if any) has tokens to spare
        (if not, this call makes no more attempts)."""
        if self.next_at is None or now < self.next_at:
            return False
        if (self.deadline is not None and now >= self.deadline) or (
            self.throttle is not None and not self.throttle.allows()
        ):
            self.next_at = None
            return False
        return True

    def choose(self, ready: Sequence[Pick]) -> Pick | None:
        """The next attempt's backend among the READY ones: one this call has
        not tried yet if there is one, else any; None if none is READY."""
        untried = [p for p in ready if p.target.address not in self.tried]
        choices = untried or ready
        return random.choice(choices) if choices else None

    def postpone(self, now: float) -> None:
        """No backend to start the due attempt on: look again a delay later."""
        self.next_at = now + max(self.policy.delay, 0.01)

    def ended(
        self,
        code: Any,
        trailing_metadata: Iterable[Any] | None,
        now: float,
        never_sent: bool = False,
    ) -> bool:
        """An attempt ended with `code` (never_sent: it failed before any
        byte of it left the process). True when the call ends with this
        outcome: OK, a fatal status, or a failure with no attempt left in
        flight or to come; the driver then cancels the others."""
        self.in_flight -= 1
        if code is OK or code == 0:
            if self.throttle is not None:
                self.throttle.success()
            return True
        if never_sent and self._budget == self.policy.max_attempts:
            self._budget += 1  # gRFC A6 transparent retry: that attempt does not count
        elif code not in self.policy.non_fatal:
            return True
        elif self.throttle is not None and not self.throttle.failure():
            self.next_at = None  # throttled: no further attempt
            return self.in_flight == 0
        if len(self.tried) < self._budget:
            pushback = pushback_seconds(trailing_metadata)
            if pushback is not None and pushback < 0:
                self.next_at = None  # the server said not to go on
            else:
                self.next_at = now + (pushback or 0.0)  # the next attempt at once
        if self.deadline is not None and self.next_at is not None and self.next_at >= self.deadline:
            self.next_at = None
        return self.in_flight == 0 and self.next_at is None
