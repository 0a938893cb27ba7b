"""LookasideChannel: a grpc.Channel that balances every call over the list
that a Lookaside (or any grpclb) balancer sends.

    channel = LookasideChannel("routeguide", "balancer:50051")
    stub = RouteGuideStub(channel)        # generated stubs work unchanged

It keeps one sub-channel per backend and watches its connectivity; calls go
round robin over the READY ones (drop entries fail a call with UNAVAILABLE),
carry the backend's lb-token, and are counted in the ClientStats reported at
the interval the balancer asked for. A call that finds no READY backend
waits in a pick queue (until one is READY or its deadline; a fail-fast call
fails once every backend is in TRANSIENT_FAILURE). A call that could not
reach its backend at all is retried once on another. When the balancer
stream breaks it keeps the last list and moves to the next balancer.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import grpc

from client_lib import _spin, calls
from client_lib._sync_link import SyncBalancerLink
from client_lib.attempts import Picking
from client_lib.core import IDLE, ChannelCore, ChannelViews, Effects
from client_lib.picker import DROP_DETAILS, CallCounters, FailedCall, Pick
from client_lib.retry import RetryConfig, subchannel_options
from client_lib.server_list import SubChannel
from client_lib.session import BalancerSession

log = logging.getLogger("lookaside.client")

ChannelOptions = Sequence[tuple[str, Any]]


# Every channel a thin channel opens has sub-channels of its own: in gRPC's
# global pool, channels to one address share one sub-channel, so a balancer
# or backend channel could inherit another's connection backoff (a refused
# port reused by a new server reads as TRANSIENT_FAILURE at once), and one
# left open anywhere keeps the connection of all.
LOCAL_POOL = ("grpc.use_local_subchannel_pool", 1)

# grpc's connectivity poller (sync channels) checks its channel once more
# within 0.2 s of a subscribe: a channel closed before that makes it raise.
POLL_QUIET = 0.25


def server_name_options(options: ChannelOptions, server_name_override: str | None) -> list[Any]:
    """The options of the channels a thin channel opens to backends (and, with
    TLS, to balancers): the user's, less the service config, whose retry and
    hedging policies the thin channel applies itself (client_lib.retry), with
    a local subchannel pool."""
    out = [o for o in subchannel_options(options) if o[0] != LOCAL_POOL[0]]
    out.append(LOCAL_POOL)
    if server_name_override:
        out.append(("grpc.ssl_target_name_override", server_name_override))
    return out


class _Watch:
    """A sync sub-channel's connectivity subscription. An IDLE sub-channel
    (its connection went away) connects again only when asked: it asks, as
    round_robin does."""

    __slots__ = ("sub", "channel", "asked_at", "stopped")

    def __init__(self, sub: SubChannel, channel: LookasideChannel) -> None:
        self.sub = sub
        self.channel = channel
        self.asked_at = time.monotonic()
        self.stopped = False
        sub.watcher = self
        sub.channel.subscribe(self.on_state, try_to_connect=True)

    def on_state(self, state: grpc.ChannelConnectivity) -> None:
        if self.stopped:
            return
        channel = self.channel
        channel._on_effects(channel._core.set_state(self.sub, state))
        if state is IDLE and not channel._core.closed:
            self.asked_at = time.monotonic()
            self.sub.channel.subscribe(self.kick, try_to_connect=True)

    def kick(self, _: grpc.ChannelConnectivity) -> None:
        self.sub.channel.unsubscribe(self.kick)

    def stop(self) -> float:
        """Unsubscribes; returns the seconds to wait before the channel may
        be closed (grpc's poller may still look at it once)."""
        self.stopped = True
        self.sub.channel.unsubscribe(self.on_state)
        self.sub.channel.unsubscribe(self.kick)
        return max(0.0, self.asked_at + POLL_QUIET - time.monotonic())


class LookasideChannel(ChannelViews, grpc.Channel):
    def __init__(
        self,
        target: str,
        balancers: str | Sequence[str],
        *,
        options: ChannelOptions = (),
        credentials: grpc.ChannelCredentials | None = None,
        balancer_credentials: grpc.ChannelCredentials | None = None,
        server_name_override: str | None = None,
        fallback_targets: Sequence[str] = (),
        fallback_timeout: float = 10.0,
        retire_grace: float = 30.0,
    ) -> None:
        """target: the service name sent to the balancer (a pool name, or a
        host[:port] that maps to one; at most 255 bytes). balancers: one
        "host:port" or several (replicas, tried in turn). credentials: for
        the backends; balancer_credentials: for the balancers (None: plaintext
        for either); server_name_override: the TLS name to check for both. fallback_targets: backends ("host:port") to
        use while the balancer says fallback or gives no list within
        fallback_timeout seconds. options: grpc channel options for the
        backends; a `grpc.service_config` in them gives retry policies
        (client_lib.retry), applied over all the backends."""
        self._session = BalancerSession(target, balancers, fallback_timeout=fallback_timeout)
        self.retry = RetryConfig.from_options(options)
        self.target = target
        self._options = server_name_options(options, server_name_override)
        self._credentials = credentials
        self._balancer_credentials = balancer_credentials
        self._retire_grace = retire_grace
        # Sub-channels retired by a new list, each batch closed by its timer
        # after the grace, or by close(), whichever comes first.
        self._retiring: dict[threading.Timer, list[SubChannel]] = {}
        self._retire_lock = threading.Lock()
        self._callbacks: list[Callable[[grpc.ChannelConnectivity], None]] = []
        self._reported = grpc.ChannelConnectivity.IDLE
        self.counters = CallCounters()
        self._core = ChannelCore(
            self._session, self._new_subchannel, fallback_targets, self.counters
        )
        self.picking: Picking = self._core  # what calls pick with (client_lib.attempts)
        self._cond = threading.Condition(self._core.lock)
        self._link = SyncBalancerLink(
            self._core, self.counters, self._on_effects, self._make_balancer_channel
        )
        self._link.start()

    # -- the balancer's actions ------------------------------------------------------

    def _make_balancer_channel(self, address: str) -> grpc.Channel:
        if self._balancer_credentials is not None:
            return grpc.secure_channel(address, self._balancer_credentials, options=self._options)
        return grpc.insecure_channel(address, options=[LOCAL_POOL])

    def _new_subchannel(self, address: str) -> SubChannel:
        if self._credentials is not None:
            ch = grpc.secure_channel(address, self._credentials, options=self._options)
        else:
            ch = grpc.insecure_channel(address, options=self._options)
        return SubChannel(address, ch)

    def _on_effects(self, effects: Effects) -> None:
        """Runs what an event of the core's asks for (never under its lock)."""
        for sub in effects.watch:
            _Watch(sub, self)
        if effects.retire:
            self._retire(effects.retire)
        if effects.changed:
            self._changed()

    def _retire(self, subs: list[SubChannel]) -> None:
        """Closes `subs` after the grace (in-flight calls finish), or at
        close(); the timer is the channel's until then."""
        with self._retire_lock:
            if not self._core.closed:
                timer = threading.Timer(self._retire_grace, self._retire_due)
                timer.args = (timer,)
                timer.name = f"lookaside-retire-{self.target}"
                timer.daemon = True
                self._retiring[timer] = subs
                timer.start()
                return
        self._close_subchannels(subs)

    def _retire_due(self, timer: threading.Timer) -> None:
        with self._retire_lock:
            subs = self._retiring.pop(timer, None)
        if subs:
            self._close_subchannels(subs)

    @staticmethod
    def _close_subchannels(subs: list[SubChannel]) -> None:
        waits = [s.watcher.stop() for s in subs if s.watcher is not None]
        quiet = max(waits, default=0.0)
        if quiet:
            time.sleep(quiet)
        for s in subs:
            _spin.unpin(s.parked)  # closing cancels the parked call: its thread ends
            s.channel.close()

    def _changed(self) -> None:
        """After a change: wakes the pick queue, tells subscribers of a new
        connectivity state (read under the core's lock, so never stale)."""
        with self._cond:
            self._cond.notify_all()
            if not self._callbacks:
                return
            state = self._core.connectivity()
            if state is self._reported:
                return
            self._reported = state
            callbacks = list(self._callbacks)
        for cb in callbacks:
            threading.Thread(target=cb, args=(state,), daemon=True).start()

    # -- picking -------------------------------------------------------------

    def wait_for_pick(self, timeout: float | None, wait_for_ready: bool | None) -> Pick:
        """A pick for a call (client_lib.attempts.Picking's ready-wait): now,
        or from the pick queue as picked() says."""
        return self.picked(self.picking.pick(), timeout, wait_for_ready)

    def picked(self, p: Pick | None, timeout: float | None, wait_for_ready: bool | None) -> Pick:
        """The pick a call goes with, from the picker's answer `p`: for None,
        waits in the pick queue until a backend is READY, the call's deadline
        passes, or (fail-fast) the channel is in TRANSIENT_FAILURE; raises
        FailedCall for those and for a drop (counted)."""
        if p is None:
            p = self._queued(timeout, bool(wait_for_ready))
        if p.target is None:
            self.counters.call_dropped(p.token)
            raise FailedCall(grpc.StatusCode.UNAVAILABLE, DROP_DETAILS)
        return p

    def _queued(self, timeout: float | None, wait_for_ready: bool) -> Pick:
        deadline = None if timeout is None else time.monotonic() + timeout
        core = self._core
        with self._cond:
            while True:
                p = core.queued_pick(wait_for_ready)
                if p is not None:
                    return p
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    raise core.deadline_passed()
                self._cond.wait(remaining)

    def wait_for_list(self, timeout: float | None = None) -> bool:
        """Blocks until a backend is READY (or the list has only drops);
        False on timeout."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while not self._usable():
                if self._core.closed:
                    return False
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return False
                self._cond.wait(remaining)
            return True

    def _usable(self) -> bool:
        picker = self._core.picker
        return picker is not None and (bool(picker.ready) or not self._core.subchannels)

    # -- grpc.Channel ----------------------------------------------------------

    def subscribe(
        self, callback: Callable[[grpc.ChannelConnectivity], None], try_to_connect: bool = False
    ) -> None:
        with self._cond:
            self._callbacks.append(callback)
            self._reported = state = self._core.connectivity()
        callback(state)

    def unsubscribe(self, callback: Callable[[grpc.ChannelConnectivity], None]) -> None:
        try:
            self._callbacks.remove(callback)
        except ValueError:
            pass

    def unary_unary(
        self,
        method: str,
        request_serializer: Any = None,
        response_deserializer: Any = None,
        _registered_method: bool = False,
    ) -> grpc.UnaryUnaryMultiCallable:
        return calls.UnaryUnary(
            self, method, request_serializer, response_deserializer, _registered_method
        )

    def unary_stream(
        self,
        method: str,
        request_serializer: Any = None,
        response_deserializer: Any = None,
        _registered_method: bool = False,
    ) -> grpc.UnaryStreamMultiCallable:
        return calls.UnaryStream(
            self, method, request_serializer, response_deserializer, _registered_method
        )

    def stream_unary(
        self,
        method: str,
        request_serializer: Any = None,
        response_deserializer: Any = None,
        _registered_method: bool = False,
    ) -> grpc.StreamUnaryMultiCallable:
        return calls.StreamUnary(
            self, method, request_serializer, response_deserializer, _registered_method
        )

    def stream_stream(
        self,
        method: str,
        request_serializer: Any = None,
        response_deserializer: Any = None,
        _registered_method: bool = False,
    ) -> grpc.StreamStreamMultiCallable:
        return calls.StreamStream(
            self, method, request_serializer, response_deserializer, _registered_method
        )

    def close(self) -> None:
        if self._core.closed:
            return
        subs = self._core.close()
        self._changed()
        self._link.stop()
        with self._retire_lock:
            timers, self._retiring = self._retiring, {}
        for timer, retired in timers.items():
            timer.cancel()
            subs += retired
        self._close_subchannels(subs)
        for timer in timers:
            if timer is not threading.current_thread():
                timer.join()  # one closing its batch right now
        self._link.join(5)

    def __enter__(self) -> LookasideChannel:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # noqa: BLE001 - interpreter shutdown
            pass
