"""A sync call that had to wait in the pick queue: `.future()` and streaming
calls return one at once, as gRPC's own do, and it starts the real call on
a helper thread as soon as a backend is READY (or fails as the pick queue
decides). It is a grpc.Future and a grpc.Call; a streaming one also
iterates its responses."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import grpc

from client_lib.picker import FailedCall


class QueuedCall(grpc.Future, grpc.Call):  # type: ignore[misc]
    def __init__(
        self, pick: Callable[[], Any], begin: Callable[[Any], Any], streaming: bool
    ) -> None:
        """pick(): waits for a pick and returns it, or raises FailedCall.
        begin(pick): starts the real call at once (it does not block)."""
        self._lock = threading.Lock()
        self._started = threading.Event()  # the real call exists, or failed
        self._call: Any = None
        self._failed: FailedCall | None = None
        self._callbacks: list[Callable[[Any], None]] = []
        self._streaming = streaming
        threading.Thread(target=self._run, args=(pick, begin), daemon=True).start()

    def _run(self, pick: Callable[[], Any], begin: Callable[[Any], Any]) -> None:
        try:
            chosen = pick()
        except FailedCall as failed:
            with self._lock:
                self._failed = self._failed or failed
            self._started.set()
            self._fire()
            return
        with self._lock:
            # A cancel() waits on this lock, so a call cancelled while it was
            # queued is never started: no byte of it leaves the process.
            if self._failed is not None:
                return
            call = self._call = begin(chosen)
        self._started.set()
        call.add_done_callback(lambda _: self._fire())

    def _fire(self) -> None:
        with self._lock:
            callbacks, self._callbacks = self._callbacks, []
        for cb in callbacks:
            cb(self)

    def _real(self, timeout: float | None = None) -> Any:
        """The started call; raises the failure, or FutureTimeoutError."""
        if not self._started.wait(timeout):
            raise grpc.FutureTimeoutError()
        if self._call is None:
            assert self._failed is not None
            raise self._failed
        return self._call

    # -- grpc.Future ---------------------------------------------------------------

    def cancel(self) -> bool:
        with self._lock:
            call = self._call
            queued = call is None and self._failed is None
            if queued:
                self._failed = FailedCall(grpc.StatusCode.CANCELLED, "cancelled while queued")
        if call is not None:
            return bool(call.cancel())
        if queued:
            self._started.set()
            self._fire()
        return queued

    def cancelled(self) -> bool:
        call = self._call
        if call is not None:
            return bool(call.cancelled())
        return self._failed is not None and self._failed.code() is grpc.StatusCode.CANCELLED

    def running(self) -> bool:
        return not self.done()

    def done(self) -> bool:
        call = self._call
        if call is not None:
            return bool(call.done())
        return self._started.is_set()

    def result(self, timeout: float | None = None) -> Any:
        return self._real(timeout).result(timeout)

    def exception(self, timeout: float | None = None) -> Any:
        try:
            return self._real(timeout).exception(timeout)
        except FailedCall as failed:
            return failed

    def traceback(self, timeout: float | None = None) -> Any:
        try:
            return self._real(timeout).traceback(timeout)
        except FailedCall:
            return None

    def add_done_callback(self, fn: Callable[[Any], None]) -> None:
        with self._lock:
            if not self.done():
                self._callbacks.append(fn)
                return
        fn(self)

    # -- grpc.Call -----------------------------------------------------------------

    def _ask(self, method: str, default: Any) -> Any:
        try:
            return getattr(self._real(), method)()
        except FailedCall as failed:
            return getattr(failed, method)() if default is None else default

    def initial_metadata(self) -> Any:
        return self._ask("initial_metadata", ())

    def trailing_metadata(self) -> Any:
        return self._ask("trailing_metadata", ())

    def code(self) -> Any:
        return self._ask("code", None)

    def details(self) -> Any:
        return self._ask("details", None)

    def is_active(self) -> bool:
        call = self._call
        return bool(call.is_active()) if call is not None else not self._started.is_set()

    def time_remaining(self) -> float | None:
        call = self._call
        return call.time_remaining() if call is not None else None

    def add_callback(self, callback: Callable[[], None]) -> bool:
        self.add_done_callback(lambda _: callback())
        return True

    # -- responses of a streaming call -----------------------------------------------

    def __iter__(self) -> QueuedCall:
        return self

    def __next__(self) -> Any:
        return next(self._real())
