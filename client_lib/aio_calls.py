"""Multi-callables and call objects of the asyncio LookasideChannel.

A call that finds a READY backend starts at once, as a grpc.aio call does.
One that finds none waits in the channel's pick queue when it is awaited
(or read, or written). Unary calls come back as a UnaryCall, which counts
the outcome for ClientStats when awaited and goes attempt after attempt as
client_lib.attempts decides (the same machine as the sync calls'). Streaming
calls are grpc.aio's own call objects when they could start at once.
"""

from __future__ import annotations

import asyncio
from typing import Any

import grpc
import grpc.aio

from client_lib.attempts import (
    WAIT_FOR_PICK,
    AioCallChannel,
    HedgedAttempts,
    Picking,
    Sleep,
    UnaryRules,
)
from client_lib.calls import _metadata
from client_lib.hedging import HedgingPolicy
from client_lib.picker import DROP_DETAILS, FailedCall, Pick
from client_lib.retry import Attempts


def rpc_error(failed: FailedCall) -> grpc.aio.AioRpcError:
    return grpc.aio.AioRpcError(
        failed.code(), grpc.aio.Metadata(), grpc.aio.Metadata(), details=failed.details()
    )


def _has_metadata(exc: grpc.aio.AioRpcError) -> bool:
    return bool(exc.initial_metadata() or exc.trailing_metadata())


_NO_METADATA = grpc.aio.Metadata()
_NO_PICK = Pick(None, ())
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
        "pick",
    )

    def __init__(
        self,
        channel: AioCallChannel,
        key: Any,
        registered: bool,
        timeout: float | None,
        metadata: Any,
        credentials: Any,
        wait_for_ready: bool | None,
        compression: Any,
        request: Any,
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
        self.pick: Pick = _NO_PICK  # the pick of `call`

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
        self.pick = p
        return call

    async def started(self) -> Any:
        if self.call is None:
            wfr = bool(self.wait_for_ready)
            self.start(await self.channel.wait_for_pick(self.deadline, wfr))
        return self.call


class UnaryCall(UnaryRules):
    """A unary-response call (grpc.aio.UnaryUnaryCall's methods), attempt
    after attempt as client_lib.attempts says (this only starts, awaits and
    sleeps). Its outcome is counted for ClientStats when it is awaited or
    cancelled; a call that is neither stays counted as started only."""

    __slots__ = ("_p", "_hedging")

    def __init__(
        self,
        pending: _Pending,
        retries: int,
        attempts: Attempts | None,
        hedging: HedgingPolicy | None = None,
    ) -> None:
        # UnaryRules' fields, set here: no second frame on every call
        self.retries = retries
        self.policy = attempts
        self.counted = False
        self._p = pending
        self._hedging = hedging  # or gRFC A6 hedging

    @property
    def picking(self) -> Picking:
        return self._p.channel.picking

    @property
    def deadline(self) -> float | None:
        return self._p.deadline

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
                code = exc.code()
                step = self.failed(
                    p.pick,
                    code,
                    exc.details(),
                    _has_metadata(exc),
                    exc.trailing_metadata(),
                    p.channel.loop_time(),
                )
                if step is None:
                    raise
                if type(step) is Sleep:
                    yield from asyncio.sleep(step.delay).__await__()
                    p.call = None  # the next attempt picks again
                else:
                    p.start(step.pick)  # type: ignore[union-attr]
                continue
            except asyncio.CancelledError:
                self._count_cancelled()
                raise
            if self.policy is None and not self.counted:
                self.counted = True  # succeeded(), inline on the path every call takes
                p.channel.counters.call_finished(True, False, p.pick.token)
            else:
                self.succeeded(p.pick)
            return response

    async def _hedged(self, policy: HedgingPolicy) -> Any:
        """A hedged call (client_lib.attempts decides; this starts the
        attempts, waits for their ends and cancels the losers)."""
        p = self._p
        ch = p.channel
        self.counted = True  # every attempt is counted by the hedged run
        if p.call is None:
            await p.started()  # the first attempt, on the usual pick
        run = HedgedAttempts(self.picking, policy, ch.retry.throttle, p.deadline)
        live: dict[asyncio.Future[Any], tuple[Any, Pick]] = {}

        def track(call: Any, q: Pick) -> None:
            live[asyncio.ensure_future(_settle(call))] = (call, q)
            run.started(q, ch.loop_time())

        track(p.call, p.pick)
        try:
            while True:
                wake = run.wake_at()
                wait = None if wake is None else max(wake - ch.loop_time(), 0.0)
                done: set[asyncio.Future[Any]] = set()
                if live:
                    done, _ = await asyncio.wait(
                        set(live), timeout=wait, return_when=asyncio.FIRST_COMPLETED
                    )
                elif wait:
                    await asyncio.sleep(wait)  # a server's pushback
                if not done:
                    step = run.timer(ch.loop_time())
                    if step is WAIT_FOR_PICK:
                        q = await ch.wait_for_pick(p.deadline, bool(p.wait_for_ready))
                        track(p.launch(q), q)
                    elif step is not None:
                        track(p.launch(step.pick), step.pick)  # type: ignore[union-attr]
                    continue
                task = done.pop()
                call, q = live.pop(task)
                if task.cancelled():  # this call was cancelled: every attempt with it
                    run.abandoned(q)
                    raise asyncio.CancelledError
                result = task.result()
                now = ch.loop_time()
                if isinstance(result, grpc.aio.AioRpcError):
                    code, has_md = result.code(), _has_metadata(result)
                    end = run.ended(
                        q, code, result.details(), has_md, result.trailing_metadata(), now
                    )
                else:
                    end = run.ended(q, grpc.StatusCode.OK, "", False, (), now)
                if end:
                    break
        finally:
            for other, other_pick in live.values():  # the losers (or all, when cancelled)
                other.cancel()
                run.abandoned(other_pick)
            await asyncio.gather(*live, return_exceptions=True)
        p.call, p.pick = call, q  # code(), details() and the rest: the winner's
        self._hedging, self.retries, self.policy = None, 0, None  # awaited again: the winner
        if isinstance(result, grpc.aio.AioRpcError):
            raise result
        return result

    def _count_cancelled(self) -> None:
        if self._p.call is not None:
            self.cancelled_by_caller(self._p.pick)

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


async def _count_stream(channel: AioCallChannel, call: Any, token: str) -> None:
    code = await call.code()
    has_md = bool(await call.initial_metadata() or await call.trailing_metadata())
    channel.counters.finish_with(code, has_md, token)


class MultiCallable:
    __slots__ = ("_channel", "_key", "_registered", "_unary", "_retries", "_policy", "_hedging")

    def __init__(
        self,
        channel: AioCallChannel,
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
    ) -> UnaryCall | DeferredStreamCall | AioFailedCall | grpc.aio.Call:
        ch = self._channel
        pending = _Pending(
            ch,
            self._key,
            self._registered,
            timeout,
            metadata,
            credentials,
            wait_for_ready,
            compression,
            request,
        )
        p = ch.picking.pick()
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
        token = p.token
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
