"""One unary call's attempts, I/O-free: the machine that the sync and
asyncio calls (client_lib.calls, client_lib.aio_calls) share, as the
balancer stream's drivers share client_lib.session.

Events go in (an attempt started on a pick, its status with the trailing
metadata, the hedging timer fired), steps come out: `Start(pick)` (start
the next attempt on that backend at once), `Sleep(delay)` (wait, then pick
again, waiting for a READY backend if need be), `WAIT_FOR_PICK` (pick
again, waiting if need be), or the end of the call. Nothing here sleeps,
reads a clock or touches a socket: the drivers pass `now` in (on their own
clock) and do the I/O.

It holds the rules in one place: gRFC A6 transparent retry (an attempt
that never left the process goes once more on another READY backend,
chosen off the rotation), a configured `retryPolicy` (client_lib.retry
decides the delay), hedging (client_lib.hedging decides when and where),
and the ClientStats counting of every attempt's end.

Calls reach their channel only through `Picking` (the channel's
`picking`, its ChannelCore) and the channel's public ready-wait
(`wait_for_pick`; on the sync channel also `picked`).
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine, Iterable
from dataclasses import dataclass
from typing import Any, Protocol

import grpc

from client_lib.hedging import Hedge, HedgingPolicy
from client_lib.picker import CallCounters, Pick, never_sent
from client_lib.retry import Attempts, RetryConfig

__all__ = [
    "WAIT_FOR_PICK",
    "HedgedAttempts",
    "Picking",
    "Sleep",
    "Start",
    "UnaryAttempts",
    "UnaryRules",
]

CANCELLED = grpc.StatusCode.CANCELLED


class Picking(Protocol):
    """What a call asks of its channel, without waiting (the waiting is the
    driver's: LookasideChannel.wait_for_pick, LookasideAioChannel's)."""

    counters: CallCounters

    def pick(self) -> Pick | None:
        """The next pick (a drop has no target), or None when no backend is
        READY (the call then waits for one)."""

    def pick_other(self, address: str) -> Pick | None:
        """A READY pick on another backend than `address`, off the rotation."""

    def ready_picks(self) -> tuple[Pick, ...]:
        """The picks whose backend is READY now."""


class CallChannel(Protocol):
    """What a sync call asks of its channel (LookasideChannel): the door
    between client_lib.calls and client_lib.channel."""

    counters: CallCounters
    picking: Picking
    retry: RetryConfig

    def wait_for_pick(self, timeout: float | None, wait_for_ready: bool | None) -> Pick:
        """A pick, waiting up to `timeout` for a READY backend."""

    def picked(self, p: Pick | None, timeout: float | None, wait_for_ready: bool | None) -> Pick:
        """`p`, or when it is None the pick that waiting gives."""


class AioCallChannel(Protocol):
    """What an asyncio call asks of its channel (LookasideAioChannel)."""

    counters: CallCounters
    picking: Picking
    retry: RetryConfig
    loop_time: Callable[[], float]

    async def wait_for_pick(self, deadline: float | None, wait_for_ready: bool) -> Pick:
        """A pick, waiting until `deadline` (loop time) for a READY backend."""

    def background(self, coro: Coroutine[Any, Any, None]) -> None:
        """Runs `coro` as a task the channel's close() awaits."""


@dataclass(frozen=True, slots=True)
class Start:
    """Start the next attempt on `pick` at once."""

    pick: Pick


@dataclass(frozen=True, slots=True)
class Sleep:
    """Wait `delay` seconds, then pick again (waiting for a READY backend)."""

    delay: float


class _WaitForPick:
    """Pick again, waiting for a READY backend if there is none now."""

    __slots__ = ()


WAIT_FOR_PICK = _WaitForPick()

Step = Start | Sleep | None


class UnaryRules:
    """A unary call's attempts one after another: transparent retry, then
    the configured retry policy. The driver starts an attempt, counts it
    started (`counters.call_started()`), and reports its end: succeeded()
    or failed(), which returns the next step, or None when the call fails
    with this attempt's error. A subclass says where its `picking` and
    `deadline` come from (UnaryAttempts holds them; the asyncio UnaryCall
    reads them off its pending call, which spares a store on every call).

    For speed a driver may count a call that succeeds at its first attempt
    with no retry policy itself: succeeded() is then only
    `counters.call_finished(True, False, token)` (and the sync driver makes
    its UnaryAttempts only at the first failure)."""

    __slots__ = ("retries", "policy", "counted")

    def __init__(self, retries: int, policy: Attempts | None) -> None:
        self.retries = retries  # transparent retries left
        self.policy = policy  # gRFC A6 configured retries, if a policy applies
        self.counted = False  # the call's outcome is in ClientStats

    @property
    def picking(self) -> Picking:
        raise NotImplementedError

    @property
    def deadline(self) -> float | None:
        """On the driver's clock; None: no deadline."""
        raise NotImplementedError

    def time_left(self, now: float) -> float | None:
        """The timeout of the next attempt: what is left of the deadline."""
        deadline = self.deadline
        return None if deadline is None else max(deadline - now, 0.0)

    def succeeded(self, p: Pick) -> None:
        if not self.counted:
            self.counted = True
            self.picking.counters.call_finished(True, False, p.token)
        if self.policy is not None:
            self.policy.succeeded()

    def failed(
        self,
        p: Pick,
        code: Any,
        details: str | None,
        has_metadata: bool,
        trailing_metadata: Iterable[Any] | None,
        now: float,
    ) -> Step:
        """The attempt on `p` failed with `code`: Start (transparent retry),
        Sleep (configured retry), or None (the call fails with it)."""
        if not self.counted:
            self.picking.counters.finish_with(code, has_metadata, p.token)
        if self.retries and never_sent(code, details, has_metadata):
            again = self.picking.pick_other(p.target.address)
            if again is not None:
                # gRFC A6: it never left this process; once more elsewhere.
                self.retries = 0
                return Start(again)
        if self.policy is not None:
            deadline = self.deadline
            left = None if deadline is None else deadline - now
            delay = self.policy.retry_after(code, trailing_metadata, left)
            if delay is not None:
                return Sleep(delay)
        self.counted = True
        return None

    def cancelled_by_caller(self, p: Pick) -> None:
        """The caller cancelled the call while its attempt on `p` ran."""
        if not self.counted:
            self.counted = True
            self.picking.counters.finish_with(CANCELLED, False, p.token)


class UnaryAttempts(UnaryRules):
    """UnaryRules over a picking and a deadline of its own."""

    __slots__ = ("_picking", "_deadline")

    def __init__(
        self, picking: Picking, retries: int, policy: Attempts | None, deadline: float | None
    ) -> None:
        super().__init__(retries, policy)
        self._picking = picking
        self._deadline = deadline

    @property
    def picking(self) -> Picking:
        return self._picking

    @property
    def deadline(self) -> float | None:
        return self._deadline


class HedgedAttempts:
    """A hedged call's attempts side by side (client_lib.hedging decides).
    The driver starts the first attempt on its usual pick and reports each
    start with started(); then, until ended() returns True, it waits for an
    attempt to end or for wake_at(), and then asks timer() what to start."""

    __slots__ = ("picking", "hedge")

    def __init__(
        self, picking: Picking, policy: HedgingPolicy, throttle: Any, deadline: float | None
    ) -> None:
        self.picking = picking
        self.hedge = Hedge(policy, throttle, deadline)

    def started(self, p: Pick, now: float) -> None:
        self.hedge.started(p.target.address, now)

    def wake_at(self) -> float | None:
        return self.hedge.wake_at()

    def timer(self, now: float) -> Start | _WaitForPick | None:
        """wake_at() came: Start the next attempt on a READY backend, or
        WAIT_FOR_PICK (none READY and none in flight), or None (nothing due
        now; look again at wake_at())."""
        hedge = self.hedge
        if not hedge.due(now):
            return None
        q = hedge.choose(self.picking.ready_picks())
        if q is not None:
            return Start(q)
        if hedge.in_flight:
            hedge.postpone(now)
            return None
        return WAIT_FOR_PICK

    def ended(
        self,
        p: Pick,
        code: Any,
        details: str | None,
        has_metadata: bool,
        trailing_metadata: Iterable[Any] | None,
        now: float,
    ) -> bool:
        """The attempt on `p` ended with `code` (counted here). True when the
        call ends with this outcome; the driver then cancels the others and
        reports each with abandoned() or counts it when it ends."""
        self.picking.counters.finish_with(code, has_metadata, p.token)
        return self.hedge.ended(
            code, trailing_metadata, now, never_sent(code, details, has_metadata)
        )

    def abandoned(self, p: Pick) -> None:
        """An attempt on `p` cancelled by this call (a loser, or all of them
        when the caller cancelled)."""
        self.picking.counters.finish_with(CANCELLED, False, p.token)
