"""A grpc.aio server interceptor that names the server on every call and
injects latency and faults.

Every call, of every service, first sends the initial metadata
`x-served-by: <name>`, so a client can tell which server answered even when
the call fails. Calls of the guarded services (the routeguide service) then
wait `delay_ms` and fail with UNAVAILABLE "injected fault" at the fault
rate. Health and reflection are never delayed or failed.

A black-holed call is different: it gets nothing back, not even the
metadata, and is held until the caller gives up. To the caller it looks
like a call lost on the way, which is what outlier detection ejects a
backend for, while the health service keeps answering SERVING.

One random draw is made per guarded call, from a random.Random(seed), so a
seeded server fails a known sequence of calls (a second one when black
holes are on).
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable, Collection

import grpc
import grpc.aio

from client_lib.load import wrap_aio_handler

SERVED_BY = "x-served-by"
FAULT_DETAILS = "injected fault"


class FaultInterceptor(grpc.aio.ServerInterceptor):
    def __init__(
        self,
        name: str = "",
        *,
        fault_rate: float = 0.0,
        delay_ms: int = 0,
        blackhole_rate: float = 0.0,
        seed: int | None = None,
        guarded: Collection[str] = (),
    ) -> None:
        """guarded: full service names ("routeguide.RouteGuide") whose calls
        get delays and faults. name may be set later, once the port is known."""
        if not 0.0 <= fault_rate <= 1.0:
            raise ValueError(f"fault rate {fault_rate} is out of range 0..1")
        if delay_ms < 0:
            raise ValueError(f"delay {delay_ms} ms is negative")
        if not 0.0 <= blackhole_rate <= 1.0:
            raise ValueError(f"black hole rate {blackhole_rate} is out of range 0..1")
        self.name = name
        self.fault_rate = fault_rate
        self.delay = delay_ms / 1000
        self.blackhole_rate = blackhole_rate
        self._random = random.Random(seed)
        self._guarded = tuple(f"/{s}/" for s in guarded)
        self.calls = 0
        self.faults = 0
        self.blackholed = 0

    async def _before(self, context: grpc.aio.ServicerContext, guarded: bool) -> None:
        if guarded and self.blackhole_rate and self._random.random() < self.blackhole_rate:
            self.calls += 1
            self.blackholed += 1
            await asyncio.Event().wait()  # until the caller's deadline or cancel
        await context.send_initial_metadata(((SERVED_BY, self.name),))
        if not guarded:
            return
        self.calls += 1
        if self.delay:
            await asyncio.sleep(self.delay)
        if self.fault_rate and self._random.random() < self.fault_rate:
            self.faults += 1
            await context.abort(grpc.StatusCode.UNAVAILABLE, FAULT_DETAILS)

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        if handler is None:
            return handler
        method = handler_call_details.method
        guarded = method.startswith(self._guarded) if self._guarded else False
        return self._wrap(handler, guarded)

    def _wrap(self, handler: grpc.RpcMethodHandler, guarded: bool) -> grpc.RpcMethodHandler:
        async def before(context: grpc.aio.ServicerContext) -> None:
            await self._before(context, guarded)

        return wrap_aio_handler(handler, before)
