"""grpc.lb.v1.LoadBalancer/BalanceLoad.

Each stream: read the initial request, refuse a bad one *before* any
response (a stream that ends after the initial response makes C-core
reconnect with no backoff), send the initial response, then the pool's
current list and every later one, until the client goes away. ClientStats
that arrive meanwhile go to the load report sink.

Responses are pre-serialized bytes shared by every stream of a pool, so
the method is registered with an identity serializer; requests arrive as
bytes too, so a malformed message gets a precise INVALID_ARGUMENT.
"""

from __future__ import annotations

import asyncio
import logging
import re
from typing import Any

import grpc
from google.protobuf.message import DecodeError

from balancer_server import lists, metrics
from balancer_server.feeds import FeedHub, PoolFeed
from balancer_server.load_reports import LoadReportSink
from lookaside.proto.lb.v1 import load_balancer_pb2 as lb

log = logging.getLogger("lookaside.balancer")

SERVICE = "grpc.lb.v1.LoadBalancer"
MAX_NAME_BYTES = 255
NAME_RE = re.compile(r"^[A-Za-z0-9._\-:\[\]]+$")


def _identity(b: bytes) -> bytes:
    return b


class BalanceLoadService:
    def __init__(
        self, hub: FeedHub, sink: LoadReportSink, *, initial_request_timeout: float = 30.0
    ) -> None:
        self.hub = hub
        self.sink = sink
        self.initial_request_timeout = initial_request_timeout
        self._stream_ids = 0

    def handler(self) -> grpc.GenericRpcHandler:
        method = grpc.stream_stream_rpc_method_handler(
            self.balance_load, request_deserializer=_identity, response_serializer=_identity
        )
        return grpc.method_handlers_generic_handler(SERVICE, {"BalanceLoad": method})

    async def _refuse(self, context: Any, reason: str, details: str) -> None:
        metrics.STREAMS_REFUSED.labels(reason).inc()
        log.info("stream refused reason=%s peer=%s: %s", reason, context.peer(), details)
        await context.abort(grpc.StatusCode.INVALID_ARGUMENT, details)

    async def _read_initial(self, request_iterator: Any, context: Any) -> str | None:
        try:
            raw = await asyncio.wait_for(
                anext(request_iterator, None), timeout=self.initial_request_timeout
            )
        except TimeoutError:
            await self._refuse(
                context,
                "timeout",
                f"no initial_request within {self.initial_request_timeout:g}s; "
                "the first message of BalanceLoad must be an initial_request",
            )
            return None
        if raw is None:
            return None  # the client closed before saying anything
        try:
            request = lb.LoadBalanceRequest.FromString(raw)
        except DecodeError:
            await self._refuse(
                context, "malformed", "malformed LoadBalanceRequest: not a valid protobuf message"
            )
            return None
        kind = request.WhichOneof("load_balance_request_type")
        if kind != "initial_request":
            await self._refuse(
                context,
                "not_initial",
                f"the first message of BalanceLoad must be an initial_request, got {kind or 'an empty request'}",
            )
            return None
        name = request.initial_request.name
        if not name:
            await self._refuse(context, "empty_name", "initial_request.name is empty")
            return None
        if len(name.encode()) > MAX_NAME_BYTES:
            await self._refuse(
                context,
                "long_name",
                f"initial_request.name is {len(name.encode())} bytes; at most {MAX_NAME_BYTES} are allowed",
            )
            return None
        if not NAME_RE.match(name):
            await self._refuse(
                context,
                "malformed_name",
                f"initial_request.name {name[:64]!r} is not a service name "
                "(host[:port] of [A-Za-z0-9._-])",
            )
            return None
        return name

    async def balance_load(self, request_iterator: Any, context: Any) -> None:
        name = await self._read_initial(request_iterator, context)
        if name is None:
            return
        feed = self.hub.resolve(name)
        self._stream_ids += 1
        stream_id = self._stream_ids
        feed.streams += 1
        joined = feed.generation
        metrics.STREAMS_OPEN.labels(feed.name).inc()
        self.sink.set_stream_count(feed.name, feed.streams)
        log.debug(
            "stream open id=%d pool=%s name=%s peer=%s", stream_id, feed.name, name, context.peer()
        )
        reader = asyncio.create_task(self._read_reports(request_iterator, feed))
        # When the client half-closes, the reader ends and stops the writer
        # below: one callback, rather than a wait on two things per update.
        me = asyncio.current_task()
        ended_by_reader = False

        def on_reader_done(_: asyncio.Task[None]) -> None:
            nonlocal ended_by_reader
            if me is not None and not me.done():
                ended_by_reader = True
                me.cancel()

        reader.add_done_callback(on_reader_done)
        try:
            await context.write(lists.initial_payload(feed.report_interval_ms))
            await self._send_lists(context, feed, joined)
        except asyncio.CancelledError:
            if not ended_by_reader or me is None:
                raise
            me.uncancel()
        finally:
            reader.remove_done_callback(on_reader_done)
            reader.cancel()
            feed.streams -= 1
            metrics.STREAMS_OPEN.labels(feed.name).dec()
            self.sink.set_stream_count(feed.name, feed.streams)
            log.debug("stream closed id=%d pool=%s", stream_id, feed.name)

    async def _send_lists(self, context: Any, feed: PoolFeed, joined: int) -> None:
        """Writes the pool's payload whenever it changes, until cancelled.
        Payloads are replaced only when they differ, so identity is enough."""
        sent: bytes | None = None
        sent_counter = metrics.LISTS_SENT.labels(feed.name)
        fanout = metrics.FANOUT_SECONDS.labels(feed.name)
        while True:
            payload, changed, generation = feed.payload, feed.changed, feed.generation
            if payload is not None and payload is not sent:
                await context.write(payload)
                if generation > joined and payload is feed.payload:
                    joined = generation
                    took = feed.delivered()
                    if took is not None:
                        fanout.observe(took)
                sent = payload
                sent_counter.inc()
            await changed.wait()

    async def _read_reports(self, request_iterator: Any, feed: PoolFeed) -> None:
        async for raw in request_iterator:
            try:
                request = lb.LoadBalanceRequest.FromString(raw)
            except DecodeError:
                log.warning("pool=%s: ignoring a malformed LoadBalanceRequest", feed.name)
                continue
            if request.HasField("client_stats"):
                self.sink.add(feed.name, request.client_stats)
