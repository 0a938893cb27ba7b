"""What both channels share and no I/O touches: the balancer session, the
current list, the sub-channels and their connectivity, the picker,
fallback, and the verdict on a call that found no READY backend.

One owner, as grpc-go's grpclb has it: ChannelCore holds the session and
everything above under one (non-reentrant) lock, and every event method
returns an `Effects` that the driver (client_lib.channel, client_lib.aio)
runs after the lock is released: sub-channels to watch or to retire, the
pick queue to wake, load reports to start. Nothing here calls back into a
driver. Every change swaps the picker whole, so picks never lock.
"""

from __future__ import annotations

import enum
import logging
import random
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import grpc

from client_lib._lb_proto import lb
from client_lib.picker import CallCounters, FailedCall, Pick, Picker
from client_lib.server_list import ListEntry, SubChannel, rebuild
from client_lib.session import (
    Action,
    BalancerSession,
    Connect,
    EnterFallback,
    Fallback,
    NewList,
    StartReports,
)

log = logging.getLogger("lookaside.client")

READY = grpc.ChannelConnectivity.READY
CONNECTING = grpc.ChannelConnectivity.CONNECTING
IDLE = grpc.ChannelConnectivity.IDLE
TRANSIENT_FAILURE = grpc.ChannelConnectivity.TRANSIENT_FAILURE
SHUTDOWN = grpc.ChannelConnectivity.SHUTDOWN

UNAVAILABLE = grpc.StatusCode.UNAVAILABLE


class Phase(enum.Enum):
    """Where the channel stands before (and after) its backends count."""

    WAITING = "waiting for the first list"  # calls wait for it
    NO_LIST = "no list, failing fast"  # fallback with no targets before any list
    SERVING = "serving a list"  # from the balancer or the fallback targets
    CLOSED = "closed"


_PHASE_STATES = {
    Phase.WAITING: CONNECTING,
    Phase.NO_LIST: TRANSIENT_FAILURE,
    Phase.CLOSED: SHUTDOWN,
}


@dataclass(slots=True)
class Effects:
    """What the driver does once the lock is released."""

    watch: list[SubChannel] = field(default_factory=list)  # new: connect and follow
    retire: list[SubChannel] = field(default_factory=list)  # close after the grace
    changed: bool = False  # wake the pick queue (and report connectivity)
    report_interval: float = 0.0  # start load reports at this interval

    def __bool__(self) -> bool:
        return bool(self.watch or self.retire or self.changed or self.report_interval)


def _no_pick() -> Pick | None:
    return None  # no list yet, or the channel is closed


class ChannelCore:
    def __init__(
        self,
        session: BalancerSession,
        make_subchannel: Callable[[str], SubChannel],
        fallback_targets: Sequence[str] = (),
        counters: CallCounters | None = None,
    ) -> None:
        self.session = session
        self.target = session.target
        self.make_subchannel = make_subchannel
        self.fallback_entries = tuple(ListEntry(a, "", False) for a in fallback_targets)
        self.lock = threading.Lock()  # guards everything here, the session included
        self.subchannels: dict[str, SubChannel] = {}
        self.picks: tuple[Pick, ...] = ()
        self.picker: Picker | None = None  # None until a list (or fallback) is in
        # client_lib.attempts.Picking: the current picker's pick, swapped with it
        self.pick: Callable[[], Pick | None] = _no_pick
        self.counters = counters if counters is not None else CallCounters()
        self.phase = Phase.WAITING
        self.no_list_reason = ""  # why fail-fast calls fail before any list

    @property
    def closed(self) -> bool:
        return self.phase is Phase.CLOSED

    @property
    def in_fallback(self) -> bool:
        """Serving the fallback targets (the session's fallback, with targets
        to fall back to): one source, the session's state."""
        return self.session.fallback is Fallback.ACTIVE and bool(self.fallback_entries)

    # -- the balancer session's events -------------------------------------------------

    def start(self, now: float) -> Connect:
        with self.lock:
            return self.session.start(now)

    def stream_opened(self, address: str) -> None:
        with self.lock:
            self.session.stream_opened(address)

    def response(self, message: lb.LoadBalanceResponse, address: str) -> Effects:
        with self.lock:
            return self._run(self.session.response(message, address))

    def stream_ended(self, now: float, error: str) -> tuple[Connect, Effects]:
        """The stream ended: where to connect next, and the effects (with
        every backend unreachable too, fallback)."""
        with self.lock:
            step, actions = self.session.stream_ended(now, error)
            if self.connectivity() is TRANSIENT_FAILURE:
                actions += self.session.backends_unreachable()
            return step, self._run(actions)

    def fallback_timer(self, now: float) -> tuple[Effects, bool]:
        """The fallback timeout: the effects, and whether the driver should
        end the open stream (it never answered)."""
        with self.lock:
            effects = self._run(self.session.fallback_timer(now))
            return effects, self.session.abandon_silent_stream

    # -- inputs ------------------------------------------------------------------

    def set_state(self, sub: SubChannel, state: grpc.ChannelConnectivity) -> Effects:
        with self.lock:
            effects = Effects()
            if sub.state is state:
                return effects
            was_ready = sub.state is READY
            sub.state = state
            if self.subchannels.get(sub.address) is not sub:
                return effects
            if was_ready or state is READY:
                self._swap_picker()
            effects.changed = True
            if state is TRANSIENT_FAILURE and self.connectivity() is TRANSIENT_FAILURE:
                # every backend unreachable: with no balancer either, fallback
                self._apply_actions(self.session.backends_unreachable(), effects)
            return effects

    def close(self) -> list[SubChannel]:
        """Closes the core: returns the sub-channels to close (the driver
        then wakes the pick queue, where every call fails CANCELLED)."""
        with self.lock:
            self.phase = Phase.CLOSED
            subs, self.subchannels = list(self.subchannels.values()), {}
            self.picker, self.picks = None, ()  # later calls fail with CANCELLED
            self.pick = _no_pick
            return subs

    def _run(self, actions: Sequence[Action]) -> Effects:
        effects = Effects()
        self._apply_actions(actions, effects)
        return effects

    def _apply_actions(self, actions: Sequence[Action], effects: Effects) -> None:
        """Applies the session's actions (under the lock) into `effects`."""
        for action in actions:
            if isinstance(action, NewList):
                new, old = self._apply(action.entries)
            elif isinstance(action, EnterFallback):
                new, old = self._enter_fallback(action.reason)
            elif isinstance(action, StartReports):
                effects.report_interval = action.interval
                continue
            else:
                continue
            effects.changed = True
            effects.watch = [s for s in effects.watch if s not in old] + new
            effects.retire += old

    def _enter_fallback(self, reason: str) -> tuple[list[SubChannel], list[SubChannel]]:
        if self.fallback_entries:
            log.warning(
                "target=%s: entering fallback (%s): %d fallback backends",
                self.target,
                reason,
                len(self.fallback_entries),
            )
            return self._apply(self.fallback_entries)
        if self.picker is None and not self.closed:
            self.phase = Phase.NO_LIST
            self.no_list_reason = reason
        log.warning(
            "target=%s: fallback (%s), but no fallback targets were given: %s",
            self.target,
            reason,
            "keeping the current list" if self.picker is not None else "calls fail fast",
        )
        return [], []

    # -- outputs -------------------------------------------------------------------

    def connectivity(self) -> grpc.ChannelConnectivity:
        """The channel's state, as gRPC aggregates round_robin's."""
        phase = self.phase
        if phase is not Phase.SERVING:
            return _PHASE_STATES[phase]
        states = [s.state for s in self.subchannels.values()]
        if READY in states:
            return READY
        if any(s is CONNECTING or s is IDLE for s in states):
            return CONNECTING
        return TRANSIENT_FAILURE

    def verdict(self, wait_for_ready: bool) -> FailedCall | None:
        """For a call that found no READY backend: the error to fail it with,
        or None when it should wait (in the driver's pick queue)."""
        if self.closed:
            return FailedCall(grpc.StatusCode.CANCELLED, "the channel was closed")
        if wait_for_ready:
            return None
        if self.phase is Phase.WAITING:
            return None
        if self.phase is Phase.NO_LIST:
            return FailedCall(
                UNAVAILABLE,
                f"no server list from the balancer for {self.target!r} yet: {self.no_list_reason}",
            )
        if not self.subchannels:
            if not self.picks:
                return FailedCall(
                    UNAVAILABLE, f"the balancer sent an empty server list for {self.target!r}"
                )
            return None  # only drops: the picker drops every call
        if self.connectivity() is TRANSIENT_FAILURE:
            return FailedCall(
                UNAVAILABLE,
                f"every backend of {self.target!r} is unreachable (all in TRANSIENT_FAILURE)",
            )
        return None

    def queued_pick(self, wait_for_ready: bool) -> Pick | None:
        """One turn of the pick queue: a pick, None to keep waiting, or
        FailedCall raised (and counted as not sent) per verdict()."""
        p = self.pick()
        if p is not None:
            return p
        failed = self.verdict(wait_for_ready)
        if failed is not None:
            if not self.closed:
                self.counters.call_not_sent()
            raise failed
        return None

    def deadline_passed(self) -> FailedCall:
        return FailedCall(
            grpc.StatusCode.DEADLINE_EXCEEDED,
            f"deadline passed while the call waited for a READY backend of "
            f"{self.target!r} ({self.connectivity().name})",
        )

    def pick_other(self, address: str) -> Pick | None:
        """A READY pick on another backend than `address` (transparent retry)."""
        picker = self.picker
        if picker is None:
            return None
        # Not through pick(): the retry must not shift the rotation, or the
        # next call would land on the failed backend again.
        others = [p for p in picker.ready if p.target.address != address]
        return random.choice(others) if others else None

    def ready_picks(self) -> tuple[Pick, ...]:
        """The picks whose backend is READY now (for a hedged attempt)."""
        picker = self.picker
        return picker.ready if picker is not None else ()

    def backends(self) -> list[tuple[str, str]]:
        picker = self.picker
        return picker.describe() if picker is not None else []

    def states(self) -> dict[str, grpc.ChannelConnectivity]:
        return {a: s.state for a, s in self.subchannels.items()}

    # -- helpers ---------------------------------------------------------------------

    def _apply(self, entries: Sequence[ListEntry]) -> tuple[list[SubChannel], list[SubChannel]]:
        if self.closed:
            return [], []
        self.phase = Phase.SERVING
        before = set(self.subchannels)
        new, picks, retired = rebuild(list(entries), self.subchannels, self.make_subchannel)
        self.subchannels = new
        self.picks = tuple(picks)
        self._swap_picker()
        added = [s for a, s in new.items() if a not in before]
        log.debug("target=%s: new list of %d entries", self.target, len(picks))
        return added, retired

    def _swap_picker(self) -> None:
        ready = tuple(p for p in self.picks if p.target is not None and p.target.state is READY)
        self.picker = picker = Picker(self.picks, ready)
        self.pick = picker.pick


class ChannelViews:
    """Read-only views both channels offer, over their core and session."""

    _core: ChannelCore
    _session: Any

    def backends(self) -> list[tuple[str, str]]:
        """The current list as (address, token); drops as ("", token)."""
        return self._core.backends()

    def backend_states(self) -> dict[str, grpc.ChannelConnectivity]:
        """Each listed backend's connectivity state."""
        return self._core.states()

    @property
    def in_fallback(self) -> bool:
        """Whether the fallback targets serve (the session's fallback state,
        `session.fallback`, with fallback targets given)."""
        return self._core.in_fallback

    @property
    def lists_received(self) -> int:
        return int(self._session.lists_received)

    @property
    def session(self) -> Any:
        """The BalancerSession (which balancer, streams opened, backoff)."""
        return self._session
