"""Multi-callables of the sync LookasideChannel.

Each call picks a READY backend (or waits for one), finds (or makes, once)
the sub-channel's own multi-callable for the method, adds the lb-token, and
counts the call for ClientStats. The hot path is a pick, a dict lookup and
a tuple concat. A unary call's attempts after a failure (transparent
retry, a configured retry or hedging) are client_lib.attempts' to decide;
this module starts, waits and sleeps. Calls reach the channel only
through its `picking` (client_lib.attempts.Picking), `wait_for_pick` and
`picked`.
"""

from __future__ import annotations

import os
import queue
import threading
import time
from typing import Any

import grpc

from client_lib import _spin
from client_lib.attempts import WAIT_FOR_PICK, CallChannel, HedgedAttempts, Sleep, UnaryAttempts
from client_lib.picker import DROP_DETAILS, LOCAL_CODES, CallCounters, FailedCall, Pick
from client_lib.queued import QueuedCall
from client_lib.retry import Attempts
from client_lib.server_list import SubChannel

__all__ = ["DROP_DETAILS", "StreamStream", "StreamUnary", "UnaryStream", "UnaryUnary"]


def _metadata(metadata: Any, extra: tuple[tuple[str, str], ...]) -> Any:
    if not metadata:
        return extra or None
    return (*metadata, *extra) if extra else metadata


def _outcome(call: Any) -> tuple[Any, str, bool]:
    """A finished call's (code, details, whether the server sent metadata),
    by the public grpc.Call methods."""
    try:
        code = call.code()
        details = call.details() or ""
        has_md = bool(call.initial_metadata() or call.trailing_metadata())
    except Exception:  # noqa: BLE001 - a cancelled future may not have them
        return grpc.StatusCode.CANCELLED, "", False
    return code, details, has_md


def _finish_callback(counters: CallCounters, token: str) -> Any:
    """The done-callback that counts a call. grpc runs it on the channel's
    own event thread, and there it must not wait for anything that only
    that thread can deliver: the status (code, details, trailing metadata)
    is in when it runs, the initial metadata may not be (a response stream
    with no messages can hand over its status first). Blocking on it would
    stall every later call on the sub-channel, deadlines included. So it
    counts at once from the status, and only a call that failed with a code
    the transport can make, and no trailers, has its initial metadata read
    on the outcome thread."""

    def done(call: Any) -> None:
        try:
            code = call.code()
            known = code is grpc.StatusCode.OK or code not in LOCAL_CODES
            known = known or bool(call.trailing_metadata())
        except Exception:  # noqa: BLE001 - a cancelled future may not have them
            code, known = grpc.StatusCode.CANCELLED, False
        if known:
            counters.finish_with(code, True, token)
        else:
            _count_later(counters, call, token)

    return done


_later: queue.SimpleQueue[tuple[CallCounters, Any, str]] | None = None
_later_lock = threading.Lock()


def _count_later(counters: CallCounters, call: Any, token: str) -> None:
    """Counts a finished call on the outcome thread (started on first use)."""
    global _later
    with _later_lock:
        if _later is None:
            _later = queue.SimpleQueue()
            threading.Thread(
                target=_count_calls, args=(_later,), name="lookaside-call-outcomes", daemon=True
            ).start()
        later = _later
    later.put((counters, call, token))


def _count_calls(later: queue.SimpleQueue[tuple[CallCounters, Any, str]]) -> None:
    while True:
        counters, call, token = later.get()
        code, _, has_md = _outcome(call)  # may wait for the initial metadata: not on grpc's thread
        counters.finish_with(code, has_md, token)


def _forget_outcome_thread() -> None:
    global _later
    _later = None  # a forked child has no outcome thread: start a new one


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_outcome_thread)


_park_lock = threading.Lock()


def _park(sub: SubChannel) -> None:
    """Before the first call on `sub` that grpc completes on its channel's
    thread (a future, a response stream), with more than one backend READY:
    keeps that thread (client_lib._spin). Over one backend the thread runs
    dry only between bursts, and there a parked call cost more CPU per
    future than the restarts it saves (bench/client_overhead.py)."""
    with _park_lock:
        if sub.parked is None:
            sub.parked = _spin.pin(sub.channel) or False


def _trailing(exc: grpc.RpcError) -> Any:
    try:
        return exc.trailing_metadata()  # type: ignore[attr-defined]
    except Exception:  # noqa: BLE001 - a local failure has none
        return None


class _Base:
    __slots__ = ("_channel", "_key", "_registered", "_counters", "_policy", "_hedging")
    _kind = ""
    _retries = 0  # transparent retries: only where the request can be sent again

    def __init__(
        self, channel: CallChannel, method: str, ser: Any, deser: Any, registered: bool
    ) -> None:
        self._channel = channel
        self._key = (self._kind, method, ser, deser)
        self._registered = registered
        self._counters = channel.counters
        # gRFC A6 configured retries or hedging: unary-unary only (its
        # request can go again)
        self._policy = channel.retry.policy(method) if self._retries else None
        self._hedging = channel.retry.hedging(method) if self._retries else None

    def _start(
        self,
        future: bool,
        request: Any,
        timeout: float | None,
        metadata: Any,
        credentials: Any,
        wait_for_ready: bool | None,
        compression: Any,
    ) -> Any:
        """A call that is not waited for here (a future, a response stream):
        returned at once, counted for ClientStats when it ends. With no
        READY backend it is a QueuedCall that starts once there is one."""
        channel = self._channel
        p = channel.picking.pick()
        args = (future, request, metadata, credentials, wait_for_ready, compression)
        if p is None:
            deadline = None if timeout is None else time.monotonic() + timeout

            def begin(q: Pick) -> Any:
                left = None if deadline is None else max(deadline - time.monotonic(), 0.0)
                return self._begin(q, left, *args)

            return QueuedCall(
                lambda: channel.wait_for_pick(timeout, wait_for_ready),
                begin,
                streaming=not future,
            )
        if p.target is None:
            self._counters.call_dropped(p.token)
            return FailedCall(grpc.StatusCode.UNAVAILABLE, DROP_DETAILS)
        return self._begin(p, timeout, *args)

    def _begin(
        self,
        p: Pick,
        timeout: float | None,
        future: bool,
        request: Any,
        metadata: Any,
        credentials: Any,
        wait_for_ready: bool | None,
        compression: Any,
    ) -> Any:
        target = p.target
        if target.parked is None and len(self._channel.picking.ready_picks()) > 1:
            _park(target)
        mc = target.methods.get(self._key) or target.multicallable(self._key, self._registered)
        counters = self._counters
        counters.call_started()
        call = (mc.future if future else mc)(
            request,
            timeout,
            (*metadata, *p.metadata) if metadata else (p.metadata or None),
            credentials,
            wait_for_ready,
            compression,
        )
        call.add_done_callback(_finish_callback(counters, p.token))
        return call


class _UnaryResponse(_Base):
    """Unary-response calls: __call__, with_call, future."""

    __slots__ = ()

    def _blocking(
        self,
        with_call: bool,
        request: Any,
        timeout: float | None,
        metadata: Any,
        credentials: Any,
        wait_for_ready: bool | None,
        compression: Any,
    ) -> Any:
        """A unary call, attempt after attempt as client_lib.attempts says;
        this thread only starts them, waits and sleeps."""
        channel = self._channel
        p = channel.picking.pick()
        if p is None or p.target is None:
            p = channel.picked(p, timeout, wait_for_ready)
        deadline = None if timeout is None else time.monotonic() + timeout
        if self._hedging is not None:
            return self._hedged(
                p, deadline, with_call, request, metadata, credentials, wait_for_ready, compression
            )
        counters = self._counters
        policy = self._policy
        # Made at the first failure: a call that succeeds needs only counting.
        run = None if policy is None else self._attempts(channel.retry.attempts(policy), deadline)
        key = self._key
        while True:
            target = p.target
            mc = target.methods.get(key) or target.multicallable(key, self._registered)
            counters.call_started()
            try:
                result = (mc.with_call if with_call else mc)(
                    request,
                    timeout,
                    (*metadata, *p.metadata) if metadata else p.metadata,
                    credentials,
                    wait_for_ready,
                    compression,
                )
            except grpc.RpcError as exc:
                if run is None:
                    run = self._attempts(None, deadline)
                step = run.failed(p, *_outcome(exc), _trailing(exc), time.monotonic())
                if step is None:
                    raise
                if type(step) is Sleep:
                    time.sleep(step.delay)
                    timeout = run.time_left(time.monotonic())
                    p = channel.wait_for_pick(timeout, wait_for_ready)
                else:
                    p = step.pick  # type: ignore[union-attr]
                    timeout = run.time_left(time.monotonic())
                continue
            if run is None:
                counters.call_finished(True, False, p.token)
            else:
                run.succeeded(p)
            return result

    def _attempts(self, policy: Attempts | None, deadline: float | None) -> UnaryAttempts:
        return UnaryAttempts(self._channel.picking, self._retries, policy, deadline)

    def _hedged(
        self,
        p: Pick,
        deadline: float | None,
        with_call: bool,
        request: Any,
        metadata: Any,
        credentials: Any,
        wait_for_ready: bool | None,
        compression: Any,
    ) -> Any:
        """A hedged unary call (client_lib.attempts decides; this thread
        starts the attempts as futures and waits for their ends)."""
        channel, counters, key = self._channel, self._counters, self._key
        run = HedgedAttempts(channel.picking, self._hedging, channel.retry.throttle, deadline)  # type: ignore[arg-type]
        ends: queue.SimpleQueue[Any] = queue.SimpleQueue()
        live: dict[Any, Pick] = {}

        def start(q: Pick) -> None:
            if q.target.parked is None and len(channel.picking.ready_picks()) > 1:
                _park(q.target)
            mc = q.target.methods.get(key) or q.target.multicallable(key, self._registered)
            left = None if deadline is None else max(deadline - time.monotonic(), 0.0)
            counters.call_started()
            future = mc.future(
                request,
                left,
                _metadata(metadata, q.metadata),
                credentials,
                wait_for_ready,
                compression,
            )
            live[future] = q
            run.started(q, time.monotonic())
            future.add_done_callback(ends.put)

        start(p)
        try:
            while True:
                wake = run.wake_at()
                try:
                    future = ends.get(
                        timeout=None if wake is None else max(wake - time.monotonic(), 0.0)
                    )
                except queue.Empty:
                    now = time.monotonic()
                    step = run.timer(now)
                    if step is WAIT_FOR_PICK:
                        left = None if deadline is None else max(deadline - now, 0.0)
                        start(channel.wait_for_pick(left, wait_for_ready))
                    elif step is not None:
                        start(step.pick)  # type: ignore[union-attr]
                    continue
                q = live.pop(future)
                code, details, has_md = _outcome(future)
                trailing = future.trailing_metadata() if code is not grpc.StatusCode.OK else ()
                if run.ended(q, code, details, has_md, trailing, time.monotonic()):
                    break
        finally:
            for other, q in live.items():  # the losers (or all, on an error here)
                other.cancel()
                other.add_done_callback(_finish_callback(counters, q.token))
        response = future.result()  # raises the attempt's error
        return (response, future) if with_call else response

    def __call__(
        self,
        request: Any,
        timeout: float | None = None,
        metadata: Any = None,
        credentials: Any = None,
        wait_for_ready: bool | None = None,
        compression: Any = None,
    ) -> Any:
        return self._blocking(
            False, request, timeout, metadata, credentials, wait_for_ready, compression
        )

    def with_call(
        self,
        request: Any,
        timeout: float | None = None,
        metadata: Any = None,
        credentials: Any = None,
        wait_for_ready: bool | None = None,
        compression: Any = None,
    ) -> Any:
        return self._blocking(
            True, request, timeout, metadata, credentials, wait_for_ready, compression
        )

    def future(
        self,
        request: Any,
        timeout: float | None = None,
        metadata: Any = None,
        credentials: Any = None,
        wait_for_ready: bool | None = None,
        compression: Any = None,
    ) -> Any:
        return self._start(
            True, request, timeout, metadata, credentials, wait_for_ready, compression
        )


class _StreamResponse(_Base):
    __slots__ = ()

    def __call__(
        self,
        request: Any,
        timeout: float | None = None,
        metadata: Any = None,
        credentials: Any = None,
        wait_for_ready: bool | None = None,
        compression: Any = None,
    ) -> Any:
        return self._start(
            False, request, timeout, metadata, credentials, wait_for_ready, compression
        )


class UnaryUnary(_UnaryResponse, grpc.UnaryUnaryMultiCallable):
    __slots__ = ()
    _kind = "unary_unary"
    _retries = 1


class StreamUnary(_UnaryResponse, grpc.StreamUnaryMultiCallable):
    __slots__ = ()
    _kind = "stream_unary"


class UnaryStream(_StreamResponse, grpc.UnaryStreamMultiCallable):
    __slots__ = ()
    _kind = "unary_stream"


class StreamStream(_StreamResponse, grpc.StreamStreamMultiCallable):
    __slots__ = ()
    _kind = "stream_stream"
