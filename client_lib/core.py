"""What both channels share and no I/O touches: the current list, the
sub-channels and their connectivity, the picker, fallback, and the verdict
on a call that found no READY backend.

The drivers (client_lib.channel, client_lib.aio) make and close the
sub-channels, watch their connectivity and report it here with
set_state(); every change swaps the picker whole and calls `on_change`
(the driver wakes its queued calls), so picks never lock.
"""

from __future__ import annotations

import logging
import random
import threading
from collections.abc import Callable, Sequence
from typing import Any

import grpc

from client_lib.picker import CallCounters, FailedCall, Pick, Picker
from client_lib.server_list import ListEntry, SubChannel, rebuild
from client_lib.session import Action, EnterFallback, NewList

log = logging.getLogger("lookaside.client")

READY = grpc.ChannelConnectivity.READY
CONNECTING = grpc.ChannelConnectivity.CONNECTING
IDLE = grpc.ChannelConnectivity.IDLE
TRANSIENT_FAILURE = grpc.ChannelConnectivity.TRANSIENT_FAILURE
SHUTDOWN = grpc.ChannelConnectivity.SHUTDOWN

UNAVAILABLE = grpc.StatusCode.UNAVAILABLE


class ChannelCore:
    def __init__(
        self,
        target: str,
        make_subchannel: Callable[[str], SubChannel],
        fallback_targets: Sequence[str] = (),
        on_change: Callable[[], None] = lambda: None,
        on_unreachable: Callable[[], None] = lambda: None,
    ) -> None:
        self.target = target
        self.make_subchannel = make_subchannel
        self.fallback_entries = tuple(ListEntry(a, "", False) for a in fallback_targets)
        self.on_change = on_change
        self.on_unreachable = on_unreachable  # every backend in TRANSIENT_FAILURE
        self.lock = threading.RLock()
        self.subchannels: dict[str, SubChannel] = {}
        self.picks: tuple[Pick, ...] = ()
        self.picker: Picker | None = None  # None until a list (or fallback) is in
        self.in_fallback = False
        self.no_list_reason = ""  # why fail-fast calls fail before any list
        self.closed = False

    # -- inputs ------------------------------------------------------------------

    def run(self, actions: Sequence[Action]) -> tuple[list[SubChannel], list[SubChannel]]:
        """Applies the session's list and fallback actions: returns (new
        sub-channels to watch, retired ones to close after a grace)."""
        added: list[SubChannel] = []
        retired: list[SubChannel] = []
        for action in actions:
            if isinstance(action, NewList):
                new, old = self.apply(action.entries)
            elif isinstance(action, EnterFallback):
                new, old = self.enter_fallback(action.reason)
            else:
                continue
            added = [s for s in added if s not in old] + new
            retired += old
        return added, retired

    def apply(self, entries: Sequence[ListEntry]) -> tuple[list[SubChannel], list[SubChannel]]:
        """A new list from the balancer: returns (new sub-channels to watch,
        retired ones to close after a grace)."""
        with self.lock:
            self.in_fallback = False
            return self._apply(entries)

    def enter_fallback(self, reason: str) -> tuple[list[SubChannel], list[SubChannel]]:
        with self.lock:
            if self.fallback_entries:
                log.warning(
                    "target=%s: entering fallback (%s): %d fallback backends",
                    self.target,
                    reason,
                    len(self.fallback_entries),
                )
                self.in_fallback = True
                return self._apply(self.fallback_entries)
            if self.picker is None:
                self.no_list_reason = reason
                self.on_change()
            log.warning(
                "target=%s: fallback (%s), but no fallback targets were given: %s",
                self.target,
                reason,
                "keeping the current list" if self.picker is not None else "calls fail fast",
            )
            return [], []

    def set_state(self, sub: SubChannel, state: grpc.ChannelConnectivity) -> None:
        with self.lock:
            if sub.state is state:
                return
            was_ready = sub.state is READY
            sub.state = state
            if self.subchannels.get(sub.address) is not sub:
                return
            if was_ready or state is READY:
                self._swap_picker()
            else:
                self.on_change()
            if state is TRANSIENT_FAILURE and self.connectivity() is TRANSIENT_FAILURE:
                self.on_unreachable()

    def close(self) -> list[SubChannel]:
        with self.lock:
            self.closed = True
            subs, self.subchannels = list(self.subchannels.values()), {}
            self.picker, self.picks = None, ()  # later calls fail with CANCELLED
            self.on_change()
            return subs

    # -- outputs -------------------------------------------------------------------

    def connectivity(self) -> grpc.ChannelConnectivity:
        """The channel's state, as gRPC aggregates round_robin's."""
        if self.closed:
            return SHUTDOWN
        if self.picker is None:
            return TRANSIENT_FAILURE if self.no_list_reason else CONNECTING
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
        if self.picker is None:
            if not self.no_list_reason:
                return None
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

    def queued_pick(self, wait_for_ready: bool, counters: CallCounters) -> Pick | None:
        """One turn of the pick queue: a pick, None to keep waiting, or
        FailedCall raised (and counted as not sent) per verdict()."""
        picker = self.picker
        p = picker.pick() if picker is not None else None
        if p is not None:
            return p
        failed = self.verdict(wait_for_ready)
        if failed is not None:
            if not self.closed:
                counters.call_not_sent()
            raise failed
        return None

    def deadline_passed(self) -> FailedCall:
        return FailedCall(
            grpc.StatusCode.DEADLINE_EXCEEDED,
            f"deadline passed while the call waited for a READY backend of "
            f"{self.target!r} ({self.connectivity().name})",
        )

    def ready_except(self, address: str) -> Pick | None:
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
        self.picker = Picker(self.picks, ready)
        self.on_change()


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
        return self._core.in_fallback

    @property
    def lists_received(self) -> int:
        return int(self._session.lists_received)

    @property
    def session(self) -> Any:
        """The BalancerSession (which balancer, streams opened, backoff)."""
        return self._session
