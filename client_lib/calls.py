"""Multi-callables of the sync LookasideChannel.

Each call picks a list slot, finds (or makes, once) the sub-channel's own
multi-callable for the method, adds the lb-token, and counts the call for
ClientStats. The hot path is a pick, a dict lookup and a tuple concat.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import grpc

from client_lib.picker import DROP_DETAILS, CallCounters, FailedCall

if TYPE_CHECKING:
    from client_lib.channel import LookasideChannel

__all__ = ["DROP_DETAILS", "StreamStream", "StreamUnary", "UnaryStream", "UnaryUnary"]


def _metadata(metadata: Any, extra: tuple[tuple[str, str], ...]) -> Any:
    if not metadata:
        return extra or None
    return (*metadata, *extra) if extra else metadata


def _finish_callback(counters: CallCounters, token: str) -> Any:
    def done(call: Any) -> None:
        # The rendezvous keeps its final status in _state; reading it directly
        # avoids three lock round trips per call. The public methods are the
        # fallback should that layout change.
        state = getattr(call, "_state", None)
        try:
            if state is not None and hasattr(state, "code"):
                code = state.code
                has_md = bool(state.initial_metadata or state.trailing_metadata)
            else:
                code = call.code()
                has_md = bool(call.initial_metadata() or call.trailing_metadata())
        except Exception:  # noqa: BLE001 - a cancelled future may not have them
            code, has_md = grpc.StatusCode.CANCELLED, False
        counters.finish_with(code, has_md, token)

    return done


def _record_error(counters: CallCounters, exc: grpc.RpcError, token: str) -> None:
    code = exc.code() if hasattr(exc, "code") else grpc.StatusCode.UNKNOWN
    try:
        has_md = bool(exc.initial_metadata() or exc.trailing_metadata())  # type: ignore[attr-defined]
    except Exception:  # noqa: BLE001
        has_md = False
    counters.finish_with(code, has_md, token)


class _Base:
    __slots__ = ("_channel", "_key", "_registered", "_counters")
    _kind = ""

    def __init__(
        self, channel: LookasideChannel, method: str, ser: Any, deser: Any, registered: bool
    ) -> None:
        self._channel = channel
        self._key = (self._kind, method, ser, deser)
        self._registered = registered
        self._counters = channel.counters


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
        p = self._channel._pick(timeout)
        mc = p.target.multicallable(self._key, self._registered)
        invoke = mc.with_call if with_call else mc
        counters = self._counters
        counters.call_started()
        try:
            result = invoke(
                request,
                timeout,
                _metadata(metadata, p.metadata),
                credentials,
                wait_for_ready,
                compression,
            )
        except grpc.RpcError as exc:
            _record_error(counters, exc, p.token)
            raise
        counters.call_finished(True, False, p.token)
        return result

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
        try:
            p = self._channel._pick(timeout)
        except FailedCall as failed:
            return failed
        mc = p.target.multicallable(self._key, self._registered)
        self._counters.call_started()
        fut = mc.future(
            request,
            timeout,
            _metadata(metadata, p.metadata),
            credentials,
            wait_for_ready,
            compression,
        )
        fut.add_done_callback(_finish_callback(self._counters, p.token))
        return fut


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
        try:
            p = self._channel._pick(timeout)
        except FailedCall as failed:
            return failed
        mc = p.target.multicallable(self._key, self._registered)
        self._counters.call_started()
        call = mc(
            request,
            timeout,
            _metadata(metadata, p.metadata),
            credentials,
            wait_for_ready,
            compression,
        )
        call.add_done_callback(_finish_callback(self._counters, p.token))
        return call


class UnaryUnary(_UnaryResponse, grpc.UnaryUnaryMultiCallable):
    __slots__ = ()
    _kind = "unary_unary"


class StreamUnary(_UnaryResponse, grpc.StreamUnaryMultiCallable):
    __slots__ = ()
    _kind = "stream_unary"


class UnaryStream(_StreamResponse, grpc.UnaryStreamMultiCallable):
    __slots__ = ()
    _kind = "unary_stream"


class StreamStream(_StreamResponse, grpc.StreamStreamMultiCallable):
    __slots__ = ()
    _kind = "stream_stream"
