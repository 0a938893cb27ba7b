"""Multi-callables and call objects of the asyncio LookasideChannel.

A call that finds a READY backend starts at once, as a grpc.aio call does.
One that finds none waits in the channel's pick queue when it is awaited
(or read, or written). Unary calls come back as a UnaryCall, which counts
the outcome for ClientStats when awaited and retries once on another
backend a call that never reached its own (gRFC A6). Streaming calls are
grpc.aio's own call objects when they could start at once.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

import grpc
import grpc.aio

from client_lib.calls import _metadata
from client_lib.hedging import Hedge, HedgingPolicy
from client_lib.picker import DROP_DETAILS, FailedCall, Pick, never_sent
from client_lib.retry import Attempts

if TYPE_CHECKING:
    from client_lib.aio import LookasideAioChannel


def rpc_error(failed: FailedCall) -> grpc.aio.AioRpcError:
    return grpc.aio.AioRpcError(
        failed.code(), grpc.aio.Metadata(), grpc.aio.Metadata(), details=failed.details()
    )


def _has_metadata(exc: grpc.aio.AioRpcError) -> bool:
    return bool(exc.initial_metadata() or exc.trailing_metadata())


_NO_METADATA = grpc.aio.Metadata()
_token_metadata: dict[tuple[tuple[str, str], ...], grpc.aio.Metadata] = {}


def _call_metadata(metadata: Any, extra: tuple[tuple[str, str], ...]) -> Any:
    """The metadata a call sends: the caller's and the pick's lb-token. With
    none of the caller's, one shared grpc.aio.Metadata per token (grpc.aio
    copies it into a tuple and never changes it), which spares grpc.aio
    building one per call."""
    if metadata:
        return _metadata(metadata, extra)
    if not extra:
        return _NO_METADATA
    md = _token_metadata.get(extra)
    if md is None:
        if len(_token_metadata) > 4096:  # tokens of lists long gone
            _token_metadata.clear()
        md = _token_metadata[extra] = grpc.aio.Metadata(*extra)
    return md


class _Pending:
    """What a call needs to start once it has a pick."""

    __slots__ = (
        "channel",
        "key",
        "registered",
        "request",
        "timeout",
        "metadata",
        "credentials",
        "wait_for_ready",
        "compression",
        "deadline",
        "call",
        "token",
        "address",
    )

    def __init__(
        self,
        channel: LookasideAioChannel,
        key: Any,
        registered: bool,
        request: Any,
        timeout: float | None,
        metadata: Any,
        credentials: Any,
        wait_for_ready: bool | None,
        compression: Any,
    ) -> None:
        self.channel = channel
        self.key = key
        self.registered = registered
        self.request = request
        self.timeout = timeout
        self.metadata = metadata
        self.credentials = credentials
        self.wait_for_ready = wait_for_ready
        self.compression = compression
        self.deadline = None if timeout is None else channel.loop_time() + timeout
        self.call: Any = None
        self.token = ""
        self.address = ""

    def launch(self, p: Pick) -> Any:
        """Starts an attempt on the pick `p` (counted as started) and
        returns its call; a drop is counted and raised."""
        target = p.target
        channel = self.channel
        if target is None:
            channel.counters.call_dropped(p.token)
            raise rpc_error(FailedCall(grpc.StatusCode.UNAVAILABLE, DROP_DETAILS))
        timeout = self.timeout
        if timeout is not None:
            timeout = max(self.deadline - channel.loop_time(), 0.0)  # type: ignore[operator]
        mc = target.methods.get(self.key) or target.multicallable(self.key, self.registered)
        channel.counters.call_started()
        return mc(
            self.request,
            timeout=timeout,
            metadata=_call_metadata(self.metadata, p.metadata),
            credentials=self.credentials,
            wait_for_ready=self.wait_for_ready,
            compression=self.compression,
        )

    def start(self, p: Pick) -> Any:
        self.call = call = self.launch(p)
        self.token = p.token
        self.address = p.target.address
        return call

    async def started(self) -> Any:
        if self.call is None:
            wfr = bool(self.wait_for_ready)
            self.start(await self.channel._wait_for_pick(self.deadline, wfr))
        return self.call


class UnaryCall:
    """A unary-response call (grpc.aio.UnaryUnaryCall's methods). Its
    outcome is counted for ClientStats when it is awaited or cancelled; a
    call that is neither stays counted as started only."""

    __slots__ = ("_p", "_counted", "_retries", "_attempts", "_hedging")

    def __init__(
        self,
        pending: _Pending,
        retries: int,
        attempts: Attempts | None,
        hedging: HedgingPolicy | None = None,
    ) -> None:
        self._p = pending
        self._counted = False
        self._retries = retries
        self._attempts = attempts  # gRFC A6 configured retries, if a policy applies
        self._hedging = hedging  # or gRFC A6 hedging

    def __await__(self) -> Any:
        # A generator, not a coroutine: awaiting the call costs no extra
        # coroutine object, on the path every unary call takes.
        if self._hedging is not None:
            return (yield from self._hedged(self._hedging).__await__())
        p = self._p
        while True:
            call = p.call
            if call is None:
                call = yield from p.started().__await__()
            try:
                response = yield from call.__await__()
            except grpc.aio.AioRpcError as exc:
                has_md = _has_metadata(exc)
                if not self._counted:
                    p.channel.counters.finish_with(exc.code(), has_md, p.token)
                again = (
                    self._retries
                    and never_sent(exc.code(), exc.details(), has_md)
                    and p.channel._core.ready_except(p.address)
                )
                if again:
                    self._retries = 0
                    p.start(again)
                    continue
                delay = self._retry_delay(exc)
                if delay is None:
                    self._counted = True
                    raise
                yield from asyncio.sleep(delay).__await__()
                p.call = None  # the next attempt picks again
                continue
            except asyncio.CancelledError:
                self._count_cancelled()
                raise
            if not self._counted:
                self._counted = True
                p.channel.counters.call_finished(True, False, p.token)
            if self._attempts is not None:
                self._attempts.succeeded()
            return response

    async def _hedged(self, policy: HedgingPolicy) -> Any:
        """A hedged call (client_lib.hedging decides; this starts the
        attempts, waits for their ends and cancels the losers)."""
        p = self._p
        ch = p.channel
        counters = ch.counters
        self._counted = True  # every attempt is counted here
        if p.call is None:
            await p.started()  # the first attempt, on the usual pick
        hedge = Hedge(policy, ch.retry.throttle, p.deadline)
        live: dict[asyncio.Future[Any], tuple[Any, str]] = {}

        def track(call: Any, token: str, address: str) -> None:
            live[asyncio.ensure_future(_settle(call))] = (call, token)
            hedge.started(address, ch.loop_time())

        def launch(q: Pick) -> None:
            track(p.launch(q), q.token, q.target.address)

        track(p.call, p.token, p.address)
        try:
            while True:
                wake = hedge.wake_at()
                wait = None if wake is None else max(wake - ch.loop_time(), 0.0)
                done: set[asyncio.Future[Any]] = set()
                if live:
                    done, _ = await asyncio.wait(
                        set(live), timeout=wait, return_when=asyncio.FIRST_COMPLETED
                    )
                elif wait:
                    await asyncio.sleep(wait)  # a server's pushback
                if not done:
                    now = ch.loop_time()
                    if hedge.due(now):
                        q = hedge.choose(ch._core.ready_picks())
                        if q is None and hedge.in_flight:
                            hedge.postpone(now)
                        else:
                            wfr = bool(p.wait_for_ready)
                            launch(q or await ch._wait_for_pick(p.deadline, wfr))
                    continue
                task = done.pop()
                call, token = live.pop(task)
                if task.cancelled():  # this call was cancelled: every attempt with it
                    counters.finish_with(grpc.StatusCode.CANCELLED, False, token)
                    raise asyncio.CancelledError
                result = task.result()
                now = ch.loop_time()
                if isinstance(result, grpc.aio.AioRpcError):
                    code, has_md = result.code(), _has_metadata(result)
                    counters.finish_with(code, has_md, token)
                    sent = not never_sent(code, result.details(), has_md)
                    end = hedge.ended(code, result.trailing_metadata(), now, not sent)
                else:
                    counters.call_finished(True, False, token)
                    end = hedge.ended(grpc.StatusCode.OK, (), now)
                if end:
                    break
        finally:
            for other, other_token in live.values():  # the losers (or all, when cancelled)
                other.cancel()
                counters.finish_with(grpc.StatusCode.CANCELLED, False, other_token)
            await asyncio.gather(*live, return_exceptions=True)
        p.call, p.token = call, token  # code(), details() and the rest: the winner's
        self._hedging, self._retries, self._attempts = None, 0, None  # awaited again: the winner
        if isinstance(result, grpc.aio.AioRpcError):
            raise result
        return result

    def _retry_delay(self, exc: grpc.aio.AioRpcError) -> float | None:
        attempts, p = self._attempts, self._p
        if attempts is None:
            return None
        left = None if p.deadline is None else p.deadline - p.channel.loop_time()
        return attempts.retry_after(exc.code(), exc.trailing_metadata(), left)

    def _count_cancelled(self) -> None:
        if not self._counted and self._p.call is not None:
            self._counted = True
            self._p.channel.counters.finish_with(grpc.StatusCode.CANCELLED, False, self._p.token)

    async def initial_metadata(self) -> Any:
        return await (await self._p.started()).initial_metadata()

    async def trailing_metadata(self) -> Any:
        return await (await self._p.started()).trailing_metadata()

    async def code(self) -> grpc.StatusCode:
        try:
            return await (await self._p.started()).code()  # type: ignore[no-any-return]
        except grpc.aio.AioRpcError as exc:
            return exc.code()

    async def details(self) -> str:
        try:
            return await (await self._p.started()).details()  # type: ignore[no-any-return]
        except grpc.aio.AioRpcError as exc:
            return exc.details() or ""

    async def wait_for_connection(self) -> None:
        await (await self._p.started()).wait_for_connection()

    def cancel(self) -> bool:
        call = self._p.call
        if call is None:
            return False
        self._count_cancelled()
        return bool(call.cancel())

    def cancelled(self) -> bool:
        return self._p.call is not None and bool(self._p.call.cancelled())

    def done(self) -> bool:
        return self._p.call is not None and bool(self._p.call.done())

    def time_remaining(self) -> float | None:
        call = self._p.call
        return call.time_remaining() if call is not None else None

    def add_done_callback(self, callback: Any) -> None:
        call = self._p.call
        if call is not None:
            call.add_done_callback(lambda _: callback(self))


async def _settle(call: Any) -> Any:
    """One hedged attempt's response, or its error."""
    try:
        return await call
    except grpc.aio.AioRpcError as exc:
        return exc


class DeferredStreamCall:
    """A streaming call that had to wait for a pick: it starts when first
    used (iterated, read, written, awaited)."""

    __slots__ = ("_p",)

    def __init__(self, pending: _Pending) -> None:
        self._p = pending

    def __aiter__(self) -> Any:
        return self._iterate()

    async def _iterate(self) -> Any:
        async for item in await self._p.started():
            yield item

    def __await__(self) -> Any:
        return self._await().__await__()

    async def _await(self) -> Any:
        return await (await self._p.started())

    async def read(self) -> Any:
        return await (await self._p.started()).read()

    async def write(self, request: Any) -> None:
        await (await self._p.started()).write(request)

    async def done_writing(self) -> None:
        await (await self._p.started()).done_writing()

    async def initial_metadata(self) -> Any:
        return await (await self._p.started()).initial_metadata()

    async def trailing_metadata(self) -> Any:
        return await (await self._p.started()).trailing_metadata()

    async def code(self) -> Any:
        return await (await self._p.started()).code()

    async def details(self) -> Any:
        return await (await self._p.started()).details()

    async def wait_for_connection(self) -> None:
        await (await self._p.started()).wait_for_connection()

    def cancel(self) -> bool:
        return self._p.call is not None and bool(self._p.call.cancel())

    def cancelled(self) -> bool:
        return self._p.call is not None and bool(self._p.call.cancelled())

    def done(self) -> bool:
        return self._p.call is not None and bool(self._p.call.done())

    def time_remaining(self) -> float | None:
        return self._p.call.time_remaining() if self._p.call is not None else None

    def add_done_callback(self, callback: Any) -> None:
        if self._p.call is not None:
            self._p.call.add_done_callback(lambda _: callback(self))


async def _count_stream(channel: LookasideAioChannel, call: Any, token: str) -> None:
    code = await call.code()
    has_md = bool(await call.initial_metadata() or await call.trailing_metadata())
    channel.counters.finish_with(code, has_md, token)


class MultiCallable:
    __slots__ = ("_channel", "_key", "_registered", "_unary", "_retries", "_policy", "_hedging")

    def __init__(
        self,
        channel: LookasideAioChannel,
        kind: str,
        method: str,
        ser: Any,
        deser: Any,
        registered: bool,
    ) -> None:
        self._channel = channel
        self._key = (kind, method, ser, deser)
        self._registered = registered
        self._unary = kind.endswith("_unary")
        self._retries = 1 if kind == "unary_unary" else 0  # only its request can go again
        self._policy = channel.retry.policy(method) if self._retries else None
        self._hedging = channel.retry.hedging(method) if self._retries else None

    def __call__(
        self,
        request: Any = None,
        *,
        timeout: float | None = None,
        metadata: Any = None,
        credentials: Any = None,
        wait_for_ready: bool | None = None,
        compression: Any = None,
    ) -> Any:
        ch = self._channel
        pending = _Pending(
            ch,
            self._key,
            self._registered,
            request,
            timeout,
            metadata,
            credentials,
            wait_for_ready,
            compression,
        )
        picker = ch._core.picker
        p = picker.pick() if picker is not None else None
        if p is not None and p.target is None:
            ch.counters.call_dropped(p.token)
            return AioFailedCall(DROP_DETAILS)
        if self._unary:
            if p is not None:
                pending.start(p)
            policy = self._policy
            attempts = None if policy is None else ch.retry.attempts(policy)
            return UnaryCall(pending, self._retries, attempts, self._hedging)
        if p is None:
            return DeferredStreamCall(pending)
        call = pending.start(p)
        token = pending.token
        call.add_done_callback(lambda c: ch.background(_count_stream(ch, c, token)))
        return call


class AioFailedCall:
    """What a dropped call returns: awaiting, iterating, reading or writing
    it raises AioRpcError(UNAVAILABLE)."""

    def __init__(self, details: str) -> None:
        self._error = rpc_error(FailedCall(grpc.StatusCode.UNAVAILABLE, details))

    def __await__(self) -> Any:
        raise self._error
        yield  # pragma: no cover - makes this a generator

    def __aiter__(self) -> AioFailedCall:
        return self

    async def __anext__(self) -> Any:
        raise self._error

    async def read(self) -> Any:
        raise self._error

    async def write(self, request: Any) -> None:
        raise self._error

    async def done_writing(self) -> None:
        return None

    async def code(self) -> grpc.StatusCode:
        return grpc.StatusCode.UNAVAILABLE

    async def details(self) -> str:
        return self._error.details() or ""

    async def initial_metadata(self) -> grpc.aio.Metadata:
        return grpc.aio.Metadata()

    async def trailing_metadata(self) -> grpc.aio.Metadata:
        return grpc.aio.Metadata()

    async def wait_for_connection(self) -> None:
        return None

    def cancel(self) -> bool:
        return False

    def cancelled(self) -> bool:
        return False

    def done(self) -> bool:
        return True

    def time_remaining(self) -> None:
        return None

    def add_done_callback(self, callback: Any) -> None:
        callback(self)
