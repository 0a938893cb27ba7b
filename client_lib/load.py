"""LoadMeter: what a backend measures about its own calls, for heartbeats.

    meter = LoadMeter()
    server = grpc.aio.server(interceptors=[meter.aio_interceptor()])
    AsyncRegistration(balancer, pool, port, meter=meter)

Each heartbeat carries calls in flight, calls per second and mean latency
since the previous heartbeat. Load-aware pools weigh backends by that
latency; graceful drain waits for in-flight calls to reach zero.

Health probes (grpc.health.v1.Health) are not load: the balancer's health
checker calls Check and Watch on every backend, and counting those would
show an idle backend as 1 call in flight and 0.6 calls per second. The
interceptors pass them through unmeasured; `ignored` holds the services so
skipped. `utilization` is -1 (unknown) unless the application reports one.
"""

from __future__ import annotations

import inspect
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import grpc
import grpc.aio

HEALTH_SERVICE = "grpc.health.v1.Health"


def _service_of(method: str) -> str:
    """ "/pkg.Service/Method" -> "pkg.Service"."""
    return method.lstrip("/").partition("/")[0]


class LoadMeter:
    def __init__(self, ignored: tuple[str, ...] = (HEALTH_SERVICE,)) -> None:
        self.ignored = frozenset(ignored)
        self._lock = threading.Lock()
        self.in_flight = 0
        self._done = 0
        self._latency_sum = 0.0
        self._since = time.monotonic()
        self.total = 0

    def counts(self, method: str) -> bool:
        """Whether calls to `method` ("/pkg.Service/Method") are load."""
        return _service_of(method) not in self.ignored

    def begin(self) -> float:
        with self._lock:
            self.in_flight += 1
        return time.perf_counter()

    def end(self, started: float) -> None:
        elapsed = time.perf_counter() - started
        with self._lock:
            self.in_flight -= 1
            self._done += 1
            self.total += 1
            self._latency_sum += elapsed

    def snapshot(self) -> dict[str, float]:
        """Figures since the previous snapshot (the heartbeat's load)."""
        now = time.monotonic()
        with self._lock:
            span = max(now - self._since, 1e-6)
            done, total_latency = self._done, self._latency_sum
            self._done, self._latency_sum, self._since = 0, 0.0, now
            in_flight = self.in_flight
        return {
            "utilization": -1.0,
            "in_flight": float(in_flight),
            "qps": done / span,
            "latency_ms": (total_latency / done * 1000.0) if done else 0.0,
        }

    def interceptor(self) -> grpc.ServerInterceptor:
        """For a sync grpc.server."""
        return _SyncMeterInterceptor(self)

    def aio_interceptor(self) -> grpc.aio.ServerInterceptor:
        """For a grpc.aio.server."""
        return _AioMeterInterceptor(self)


def _factory_and_behavior(handler: grpc.RpcMethodHandler) -> tuple[Callable[..., Any], Any]:
    if handler.request_streaming and handler.response_streaming:
        return grpc.stream_stream_rpc_method_handler, handler.stream_stream
    if handler.request_streaming:
        return grpc.stream_unary_rpc_method_handler, handler.stream_unary
    if handler.response_streaming:
        return grpc.unary_stream_rpc_method_handler, handler.unary_stream
    return grpc.unary_unary_rpc_method_handler, handler.unary_unary


class _SyncMeterInterceptor(grpc.ServerInterceptor):
    def __init__(self, meter: LoadMeter) -> None:
        self.meter = meter

    def intercept_service(self, continuation: Any, details: grpc.HandlerCallDetails) -> Any:
        handler = continuation(details)
        if handler is None or not self.meter.counts(details.method):
            return handler
        factory, behavior = _factory_and_behavior(handler)
        meter = self.meter
        if handler.response_streaming:

            def streaming(request: Any, context: Any) -> Iterator[Any]:
                started = meter.begin()
                try:
                    yield from behavior(request, context)
                finally:
                    meter.end(started)

            wrapped: Callable[..., Any] = streaming
        else:

            def unary(request: Any, context: Any) -> Any:
                started = meter.begin()
                try:
                    return behavior(request, context)
                finally:
                    meter.end(started)

            wrapped = unary
        return factory(wrapped, handler.request_deserializer, handler.response_serializer)


def wrap_aio_handler(
    handler: grpc.RpcMethodHandler,
    enter: Callable[[Any], Awaitable[Any]],
    leave: Callable[[Any], None] | None = None,
) -> grpc.RpcMethodHandler:
    """A grpc.aio handler that awaits enter(context) before the call (it may
    abort it) and, when the call ends however it ends, calls leave() with
    what enter returned. Streams written with context.write() count as
    unary here: the wrapper awaits them whole."""
    factory, behavior = _factory_and_behavior(handler)
    if handler.response_streaming and inspect.isasyncgenfunction(behavior):

        async def streaming(request: Any, context: Any) -> AsyncIterator[Any]:
            token = await enter(context)
            try:
                async for response in behavior(request, context):
                    yield response
            finally:
                if leave is not None:
                    leave(token)

        wrapped: Callable[..., Any] = streaming
    else:

        async def unary(request: Any, context: Any) -> Any:
            token = await enter(context)
            try:
                result = behavior(request, context)
                if inspect.isawaitable(result):
                    result = await result
                return result
            finally:
                if leave is not None:
                    leave(token)

        wrapped = unary
    return factory(
        wrapped,
        request_deserializer=handler.request_deserializer,
        response_serializer=handler.response_serializer,
    )


class _AioMeterInterceptor(grpc.aio.ServerInterceptor):
    def __init__(self, meter: LoadMeter) -> None:
        self.meter = meter

    async def _begin(self, context: Any) -> float:
        return self.meter.begin()

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(details)
        if handler is None or not self.meter.counts(details.method):
            return handler
        return wrap_aio_handler(handler, self._begin, self.meter.end)
