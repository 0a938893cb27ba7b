"""grpc.lb.v1.LoadBalancer/BalanceLoad.

Each stream: read the initial request, refuse a bad one *before* any
response (a stream that ends after the initial response makes C-core
reconnect with no backoff), send the initial response, then the pool's
current list and every later one, until the client goes away. ClientStats
that arrive meanwhile go to the load report sink.

A stream is one coroutine, reading the client's reports. Lists are written
by the pool's feed, which offers each new one to every stream in one pass
(`_Stream.offer`): each stream starts its write there, with no task of its
own, and nothing is held per stream between lists.

Responses are pre-serialized bytes shared by every stream of a pool, so
the method is registered with an identity serializer; requests arrive as
bytes too, so a malformed message gets a precise INVALID_ARGUMENT.

Limits: open streams per client IP (RESOURCE_EXHAUSTED before the initial
response), and reports checked by balancer_server.report_ingest before
the sink counts them. A stream whose name matches no pool waits for that
pool, but is counted under pool="" and writes nothing to Redis; its
initial metadata carries `lookaside-unknown-pool: NAME` (which clients
ignore) so that a person watching it can be told.

Evidence: a stream's reports count as outlier evidence (they may eject a
backend, with the agreement of other streams) unless its pool requires
client credentials and the stream brought none (balancer_server.auth:
`client_principal`); those are counted for display only. A client token
that is not the pool's is refused before the initial response.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Callable, Coroutine, Hashable
from typing import Any

import grpc
from google.protobuf.message import DecodeError

from balancer_server import lists, metrics
from balancer_server.auth import AuthError, RegistrationAuth
from balancer_server.feeds import FeedHub, PoolFeed
from balancer_server.limits import (
    REPORT_BURST,
    RateLimitedLog,
    StreamsPerAddress,
    client_network,
    refuse_stream,
)
from balancer_server.load_reports import LoadReportSink
from balancer_server.report_ingest import StreamReports
from lookaside_proto.lb.v1 import load_balancer_pb2 as lb

UNKNOWN_POOL_KEY = "lookaside-unknown-pool"

log = logging.getLogger("lookaside.balancer")

SERVICE = "grpc.lb.v1.LoadBalancer"
MAX_NAME_BYTES = 255
NAME_RE = re.compile(r"[A-Za-z0-9._\-:\[\]]+")
DEFAULT_MAX_STREAMS_PER_ADDRESS = 1000


def _identity(b: bytes) -> bytes:
    return b


class _Stream:
    """One client stream as its pool's feed sees it: writes the feed's
    current payload for its subset, one write at a time, newest first.

    A write is driven without a task: `offer` starts grpc.aio's write
    coroutine right away (that first step hands the message to the
    transport) and resumes it from its future's callback when the
    transport is done, which is all a task would do, minus the task, its
    scheduling and its bookkeeping, 10,000 times per fan-out."""

    __slots__ = (
        "context", "feed", "subset", "sent", "writing", "waiting", "owed", "closed",
        "sent_counter", "reports", "label", "on_move", "key", "principals",
    )  # fmt: skip

    def __init__(
        self,
        context: Any,
        feed: PoolFeed,
        label: str,
        report_burst: int,
        on_move: Callable[[_Stream, PoolFeed], None] | None = None,
    ) -> None:
        self.context = context
        self.feed = feed
        # Which of the feed's payloads this stream sends (None: the whole
        # pool's list).
        self.subset: Hashable = None
        self.on_move = on_move
        self.label = label
        # Looked up once: labels() takes a lock, and this counts every write.
        self.sent_counter = metrics.LISTS_SENT.labels(label)
        self.reports = StreamReports(burst=report_burst)
        self.sent: bytes | None = None
        # The write under way: grpc.aio's write coroutine and the payload it
        # writes, and the future it waits on.
        self.writing: tuple[Coroutine[Any, Any, None], bytes] | None = None
        self.waiting: asyncio.Future[Any] | None = None
        # The feed generation whose fan-out waits for this stream's write
        # (0: none).
        self.owed = 0
        self.closed = False
        # The stream's name among accusers (set by the service), and who it
        # is per pool (None: its reports are shown, never evidence).
        self.key = ""
        self.principals: dict[str, str | None] = {}

    def offer(self, generation: int = 0) -> bool:
        if self.closed:
            return False
        payload = self.feed.payload_for(self.subset)
        if payload is None or payload is self.sent:
            return False
        if generation and self.owed != generation:
            self.owed = generation
            self.feed.owe()
        if self.writing is None:
            # The tokens count as handed out from the moment the write
            # starts: a client can read the list and report on it before the
            # write completes.
            self.reports.sent(payload)
            self.writing = (self.context.write(payload), payload)
            self._step(None)
        return True

    def _step(self, _: object) -> None:
        """Runs the write coroutine up to its next wait, or to its end."""
        self.waiting = None
        if self.writing is None:
            return
        coro, payload = self.writing
        try:
            future = coro.send(None)
        except StopIteration:
            self.writing = None
            self._written(payload)
            return
        except (KeyboardInterrupt, SystemExit):
            raise
        except BaseException:  # noqa: BLE001 - cancelled, aborted, or the RPC is over
            # The RPC is over; its handler is ending too.
            self.writing = None
            self.close()
            return
        if future is None:  # a bare yield: go on at the next turn of the loop
            asyncio.get_running_loop().call_soon(self._step, None)
            return
        future._asyncio_future_blocking = False
        self.waiting = future
        future.add_done_callback(self._step)

    def _written(self, payload: bytes) -> None:
        self.sent = payload
        feed = self.feed
        self.sent_counter.inc()
        if self.owed == feed.generation and payload is feed.payload_for(self.subset):
            self._settle()
        if not self.closed:
            self.offer()

    def _settle(self) -> None:
        """This stream no longer holds up its feed's fan-out."""
        feed = self.feed
        if self.owed and self.owed == feed.generation:
            took = feed.delivered()
            if took is not None:
                metrics.FANOUT_SECONDS.labels(feed.name).observe(took)
        self.owed = 0

    def move(self, feed: PoolFeed) -> None:
        """Binds the stream to another pool's feed (see FeedHub._rebind)."""
        if self.closed or feed is self.feed:
            return
        old = self.feed
        self._settle()
        old.unsubscribe(self)
        self.feed = feed
        self.sent_counter = metrics.LISTS_SENT.labels(feed.name)
        feed.subscribe(self)
        if self.on_move is not None:
            self.on_move(self, old)

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self._settle()
            self.feed.unsubscribe(self)
            if self.waiting is not None:
                self.waiting.cancel()


class BalanceLoadService:
    def __init__(
        self,
        hub: FeedHub,
        sink: LoadReportSink,
        *,
        initial_request_timeout: float = 30.0,
        max_streams_per_address: int = DEFAULT_MAX_STREAMS_PER_ADDRESS,
        report_burst: int = REPORT_BURST,
        auth: RegistrationAuth | None = None,
        replica_id: str = "",
    ) -> None:
        self.report_burst = report_burst
        self.auth = auth
        self.replica_id = replica_id
        self.hub = hub
        hub.on_appear = self._appeared
        self.sink = sink
        self.initial_request_timeout = initial_request_timeout
        self.per_address = StreamsPerAddress(max_streams_per_address)
        self._stream_ids = 0
        self._log = RateLimitedLog(log)

    def handler(self) -> grpc.GenericRpcHandler:
        method = grpc.stream_stream_rpc_method_handler(
            self.balance_load, request_deserializer=_identity, response_serializer=_identity
        )
        return grpc.method_handlers_generic_handler(SERVICE, {"BalanceLoad": method})

    async def _refuse(
        self,
        context: Any,
        reason: str,
        details: str,
        code: grpc.StatusCode = grpc.StatusCode.INVALID_ARGUMENT,
    ) -> None:
        await refuse_stream(
            context, self._log, metrics.STREAMS_REFUSED, "stream", reason, details, code
        )

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
        if not NAME_RE.fullmatch(name):
            await self._refuse(
                context,
                "malformed_name",
                f"initial_request.name {name[:64]!r} is not a service name "
                "(host[:port] of [A-Za-z0-9._-])",
            )
            return None
        return name

    async def balance_load(self, request_iterator: Any, context: Any) -> None:
        address = client_network(context.peer())
        if not self.per_address.acquire(address):
            metrics.LIMIT_REFUSALS.labels("streams_per_address").inc()
            await self._refuse(
                context,
                "streams_per_address",
                f"too many BalanceLoad streams from {address[:64]}: at most "
                f"{self.per_address.limit} are allowed per client address (an IPv4 address "
                "or an IPv6 /64)",
                grpc.StatusCode.RESOURCE_EXHAUSTED,
            )
            return
        try:
            await self._serve(request_iterator, context)
        finally:
            self.per_address.release(address)

    async def _serve(self, request_iterator: Any, context: Any) -> None:
        name = await self._read_initial(request_iterator, context)
        if name is None:
            return
        feed = self.hub.resolve(name)
        # A name of no pool gets no series (and no Redis keys) of its own.
        known = feed.exists
        label = feed.name if known else ""
        try:
            principal = self._principal(context, feed.name)
        except AuthError as exc:
            await self._refuse(context, exc.reason, exc.details, exc.code)
            return
        self._stream_ids += 1
        stream_id = self._stream_ids
        if not known:
            # Clients ignore it; `lookaside watch` says the pool does not exist.
            await context.send_initial_metadata(((UNKNOWN_POOL_KEY, name),))
        await context.write(lists.initial_payload(feed.report_interval_ms))
        stream = _Stream(context, feed, label, self.report_burst, self._moved)
        stream.key = f"{self.replica_id}/{stream_id}"
        stream.principals[feed.name] = principal
        feed.subscribe(stream)
        metrics.STREAMS_OPEN.labels(label).inc()
        if known:
            self.sink.set_stream_count(feed.name, feed.streams)
        self.hub.track(name, stream)
        log.debug(
            "stream open id=%d pool=%s name=%s peer=%s", stream_id, label, name, context.peer()
        )
        try:
            # Until the client half-closes (the stream then ends with OK) or
            # goes away (this is cancelled).
            await self._read_reports(request_iterator, stream)
        finally:
            self.hub.untrack(name, stream)
            stream.close()
            feed = stream.feed
            metrics.STREAMS_OPEN.labels(stream.label).dec()
            if feed.exists:
                self.sink.set_stream_count(feed.name, feed.streams)
            elif not feed.subscribers:
                # Nothing is kept for a name that matched no pool.
                self.hub.feeds.pop(feed.name, None)
            log.debug("stream closed id=%d pool=%s", stream_id, stream.label)

    def _appeared(self, feed: PoolFeed) -> None:
        """The streams that waited on `feed` before its pool existed now
        count under it (metric series and the stream count in Redis)."""
        for subscriber in list(feed.subscribers):
            if isinstance(subscriber, _Stream) and subscriber.label != feed.name:
                metrics.STREAMS_OPEN.labels(subscriber.label).dec()
                subscriber.label = feed.name
                subscriber.sent_counter = metrics.LISTS_SENT.labels(feed.name)
                metrics.STREAMS_OPEN.labels(feed.name).inc()
        self.sink.set_stream_count(feed.name, feed.streams)

    def _moved(self, stream: _Stream, old: PoolFeed) -> None:
        new = stream.feed
        metrics.STREAMS_OPEN.labels(stream.label).dec()
        stream.label = new.name if new.exists else ""
        metrics.STREAMS_OPEN.labels(stream.label).inc()
        for feed in (old, new):
            if feed.exists:
                self.sink.set_stream_count(feed.name, feed.streams)
        log.debug("stream moved from pool=%s to pool=%s", old.name, new.name)

    def _principal(self, context: Any, pool: str) -> str | None:
        """Who the stream is in `pool` (see RegistrationAuth.client_principal)."""
        if self.auth is None:
            return "anonymous"
        return self.auth.client_principal(
            pool, context.invocation_metadata(), context.auth_context(), context.peer()
        )

    def _evidence_key(self, stream: _Stream, pool: str) -> str:
        """The stream's accuser name when its reports into `pool` may eject,
        else "" (counted for display only)."""
        if pool not in stream.principals:  # it moved to another pool
            try:
                stream.principals[pool] = self._principal(stream.context, pool)
            except AuthError:
                stream.principals[pool] = None
        if stream.principals[pool] is None:
            metrics.REPORTS_DISPLAY_ONLY.labels(pool).inc()
            return ""
        return stream.key

    async def _read_reports(self, request_iterator: Any, stream: _Stream) -> None:
        async for raw in request_iterator:
            try:
                request = lb.LoadBalanceRequest.FromString(raw)
            except DecodeError:
                metrics.REPORTS_REFUSED.labels("malformed").inc()
                self._log.warning(
                    "malformed", "ignoring a malformed LoadBalanceRequest pool=%s peer=%s",
                    stream.feed.name, stream.context.peer(),
                )  # fmt: skip
                continue
            if not request.HasField("client_stats"):
                continue
            feed = stream.feed  # it may have moved to another pool
            if not feed.exists:
                metrics.REPORTS_REFUSED.labels("no_pool").inc()
                continue
            stats = stream.reports.check(request.client_stats, feed.report_interval_ms)
            if stats is not None:
                self.sink.add(feed.name, stats, self._evidence_key(stream, feed.name))
