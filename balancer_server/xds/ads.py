"""envoy.service.discovery.v3.AggregatedDiscoveryService/StreamAggregatedResources
(state of the world).

Per stream and resource type: the names subscribed, and the version and
nonce of the last response. A request answers the last response when it
carries its nonce: without `error_detail` it is an ACK, with one a NACK
(logged with its detail and counted; the client keeps the version it had
and nothing is re-sent until the resources change). Neither is answered.
A request whose names changed is answered at once, and so is the first
request of a type on a stream, whatever version the client says it holds:
a client that reconnects (to this replica or another, or to a restarted
one) gets the current state at once.

Every response of a type carries all the subscribed resources of that
type that exist (Listener and Cluster responses must: a Listener or
Cluster left out is deleted on the client). A name of no pool is left out,
so the client's does-not-exist timer applies; a pool that appears later is
sent then. Wildcard subscriptions (`*`, or an empty first Listener or
Cluster request) and names over the limits end the stream with
INVALID_ARGUMENT and a message that says why.

Responses are written like grpclb lists (balancer_server.balance_load):
one write at a time per stream, from shared pre-serialized resources
(balancer_server.xds.resources); a type changed again while a write is
under way is sent once that write is done, newest state only.

Trust is grpclb's: the same server credentials (TLS, mTLS) and, per pool
subscribed to, the same client credentials check
(RegistrationAuth.client_principal): a client token that is not the
pool's ends the stream with UNAUTHENTICATED.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from typing import Any

import grpc
from envoy.service.discovery.v3 import ads_pb2, discovery_pb2
from google.protobuf.message import DecodeError

from balancer_server.auth import AuthError, RegistrationAuth
from balancer_server.balance_load import MAX_NAME_BYTES, NAME_RE
from balancer_server.limits import (
    RateLimitedLog,
    StreamsPerAddress,
    client_network,
    refuse_stream,
)
from balancer_server.xds import metrics
from balancer_server.xds.hub import XdsHub
from balancer_server.xds.resources import SHORT, TYPES, field_bytes
from balancer_server.xds_streams import StreamRecord, TypeRecord, XdsStreamTable

log = logging.getLogger("lookaside.balancer.xds")

# envoy.service.discovery.v3.AggregatedDiscoveryService (its descriptor is
# loaded, so server reflection lists it).
SERVICE = ads_pb2.DESCRIPTOR.services_by_name["AggregatedDiscoveryService"].full_name
METHOD = "StreamAggregatedResources"
MAX_NAMES_PER_TYPE = 100
# Metric children looked up once: labels() takes a lock, and these count
# every response and every ACK. Indexed like TYPES.
_SENT = tuple(metrics.XDS_RESPONSES.labels(SHORT[t]) for t in TYPES)
_ACKS = tuple(metrics.XDS_ACKS.labels(SHORT[t]) for t in TYPES)
_UPDATE_SECONDS = tuple(metrics.XDS_UPDATE_SECONDS.labels(SHORT[t]) for t in TYPES)
TYPE_INDEX = {t: i for i, t in enumerate(TYPES)}
MAX_SHARED_NAME_SETS = 10_000
# The names held by the shared sets at most, all sets together: distinct
# subscriptions (a resubscription storm) cannot pin more than this.
MAX_SHARED_NAMES = 20_000
DEFAULT_MAX_STREAMS_PER_ADDRESS = 1000


class StreamError(Exception):
    def __init__(self, code: grpc.StatusCode, details: str, reason: str) -> None:
        super().__init__(details)
        self.code = code
        self.details = details
        self.reason = reason


def _identity(b: bytes) -> bytes:
    return b


def _nonce_field(nonce: str) -> bytes:
    """DiscoveryResponse field 5 (nonce): the only bytes of a response
    that differ between the streams sent the same resources."""
    data = nonce.encode()
    return b"\x2a" + bytes((len(data),)) + data if len(data) < 0x80 else field_bytes(5, data)


class _TypeState(TypeRecord):
    """One resource type on one stream: what it subscribes to and what it
    was last sent, and (as the stream table's record of the type) what
    the client last ACKed and NACKed: one object per type and stream."""

    __slots__ = ("names", "version", "nonce", "dirty", "force")

    def __init__(self) -> None:
        super().__init__()
        self.names: frozenset[str] = frozenset()
        # Of the last response: names a set of resource versions; the
        # nonce is the stream's count of responses then (0: none sent).
        self.version = ""
        self.nonce = 0
        self.dirty = False
        self.force = False


class AdsStream:
    """One client's ADS stream: what it subscribes to and what it was sent.

    Held per open stream, so kept small: the per-type states in a list
    indexed like TYPES, the nonce a counter, the stream's id and node in
    its table record, and every response's bytes shared with the other
    streams sent the same resources (only the nonce is its own)."""

    __slots__ = (
        "context", "hub", "record", "types", "writing", "closed", "sent", "kind", "since", "loop",
    )  # fmt: skip

    def __init__(self, context: Any, hub: XdsHub, record: StreamRecord) -> None:
        self.context = context
        self.hub = hub
        self.record = record
        self.types: list[_TypeState | None] = [None] * len(TYPES)
        self.writing: asyncio.Task[None] | None = None
        self.closed = False
        # Responses written so far: the next nonce is one more.
        self.sent = 0
        # Of the write under way: its type's index, and when the change it
        # carries was made (None for an answer to a request).
        self.kind = 0
        self.since: float | None = None
        self.loop = asyncio.get_running_loop()

    @property
    def stream_id(self) -> str:
        return self.record.stream_id

    def changed(self, type_url: str) -> None:
        state = self.types[TYPE_INDEX[type_url]]
        if state is not None:
            state.dirty = True
            if self.writing is None:
                self.offer()

    def offer(self) -> None:
        """Writes the first type with something to send, unless a write is
        under way (its completion offers again)."""
        if self.writing is not None or self.closed:
            return
        for index, state in enumerate(self.types):
            if state is None or not state.dirty:
                continue
            state.dirty = False
            type_url = TYPES[index]
            version, body, changed_at = self.hub.response(type_url, state.names)
            if version == state.version and not state.force:
                continue
            forced, state.force = state.force, False
            self.sent += 1
            state.version = version
            state.nonce = self.sent
            # An update (not an answer to a subscription) is timed from the change.
            self.kind, self.since = index, None if forced else changed_at
            payload = body + _nonce_field(str(self.sent))
            self.writing = self.loop.create_task(self.context.write(payload))
            self.writing.add_done_callback(self._written)
            return

    def _written(self, task: asyncio.Task[None]) -> None:
        self.writing = None
        if task.cancelled() or task.exception() is not None:
            self.close()
            return
        _SENT[self.kind].inc()
        if self.since is not None:
            _UPDATE_SECONDS[self.kind].observe(time.perf_counter() - self.since)
        self.offer()

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        for type_url, state in zip(TYPES, self.types, strict=True):
            if state is not None:
                for name in state.names:
                    self.hub.unwatch(type_url, name, self)
        if self.writing is not None:
            self.writing.cancel()


class AdsService:
    def __init__(
        self,
        hub: XdsHub,
        table: XdsStreamTable,
        *,
        auth: RegistrationAuth | None = None,
        replica_id: str = "",
        initial_request_timeout: float = 30.0,
        max_streams_per_address: int = DEFAULT_MAX_STREAMS_PER_ADDRESS,
    ) -> None:
        self.hub = hub
        self.table = table
        self.auth = auth
        self.replica_id = replica_id
        self.initial_request_timeout = initial_request_timeout
        self.per_address = StreamsPerAddress(max_streams_per_address)
        self._ids = itertools.count(1)
        self._log = RateLimitedLog(log)
        self._shared_names: dict[frozenset[str], frozenset[str]] = {}
        self._shared_count = 0

    def handler(self) -> grpc.GenericRpcHandler:
        method = grpc.stream_stream_rpc_method_handler(
            self.stream, request_deserializer=_identity, response_serializer=_identity
        )
        return grpc.method_handlers_generic_handler(SERVICE, {METHOD: method})

    async def _refuse(self, context: Any, error: StreamError) -> None:
        await refuse_stream(
            context, self._log, metrics.XDS_REFUSED, "ADS stream", error.reason, error.details,
            error.code,
        )  # fmt: skip

    async def stream(self, request_iterator: Any, context: Any) -> None:
        address = client_network(context.peer())
        if not self.per_address.acquire(address):
            await self._refuse(
                context,
                StreamError(
                    grpc.StatusCode.RESOURCE_EXHAUSTED,
                    f"too many ADS streams from {address[:64]}: at most "
                    f"{self.per_address.limit} are allowed per client address",
                    "streams_per_address",
                ),
            )
            return
        stream: AdsStream | None = None
        try:
            try:
                raw = await asyncio.wait_for(
                    anext(request_iterator, None), self.initial_request_timeout
                )
            except TimeoutError:
                raise StreamError(
                    grpc.StatusCode.INVALID_ARGUMENT,
                    f"no DiscoveryRequest within {self.initial_request_timeout:g}s",
                    "timeout",
                ) from None
            if raw is None:
                return
            request = self._parse(raw)
            stream_id = f"{self.replica_id}/xds/{next(self._ids)}"
            record = self.table.opened(stream_id, context.peer(), request.node.id)
            stream = AdsStream(context, self.hub, record)
            metrics.XDS_STREAMS_OPEN.inc()
            log.debug(
                "ADS stream open id=%s node=%s peer=%s",
                stream_id, request.node.id, context.peer(),
            )  # fmt: skip
            self._handle(stream, request, context)
            del raw, request  # nothing of a request is held while the stream waits
            async for raw in request_iterator:
                self._handle(stream, self._parse(raw), context)
        except StreamError as exc:
            if stream is not None:
                stream.close()
            await self._refuse(context, exc)
        finally:
            self.per_address.release(address)
            if stream is not None:
                stream.close()
                metrics.XDS_STREAMS_OPEN.dec()
                self.table.closed(stream.stream_id)
                log.debug("ADS stream closed id=%s", stream.stream_id)

    @staticmethod
    def _parse(raw: bytes) -> Any:
        try:
            request = discovery_pb2.DiscoveryRequest.FromString(raw)
        except DecodeError:
            raise StreamError(
                grpc.StatusCode.INVALID_ARGUMENT,
                "malformed DiscoveryRequest: not a valid protobuf message",
                "malformed",
            ) from None
        if request.type_url not in SHORT:
            raise StreamError(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"resource type {request.type_url[:120]!r} is not served; this ADS server "
                "serves the v3 Listener, RouteConfiguration, Cluster and ClusterLoadAssignment",
                "unknown_type",
            )
        return request

    def _check_names(self, type_url: str, names: frozenset[str], first: bool) -> None:
        if "*" in names or (first and not names and type_url in (TYPES[0], TYPES[2])):
            raise StreamError(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"wildcard subscriptions are not served ({SHORT[type_url].upper()}): "
                "subscribe to pools by name (xds:///POOL)",
                "wildcard",
            )
        if len(names) > MAX_NAMES_PER_TYPE:
            raise StreamError(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"{len(names)} {SHORT[type_url].upper()} names subscribed; at most "
                f"{MAX_NAMES_PER_TYPE} are allowed per stream",
                "too_many_names",
            )
        for name in names:
            size = len(name.encode())
            if size > MAX_NAME_BYTES:
                raise StreamError(
                    grpc.StatusCode.INVALID_ARGUMENT,
                    f"resource name of {size} bytes; at most {MAX_NAME_BYTES} are allowed",
                    "long_name",
                )
            if not NAME_RE.fullmatch(name):
                raise StreamError(
                    grpc.StatusCode.INVALID_ARGUMENT,
                    f"resource name {name[:64]!r} is not a pool name ([A-Za-z0-9._-])",
                    "malformed_name",
                )

    def _check_credentials(self, context: Any, pool: str) -> None:
        if self.auth is None:
            return
        try:
            self.auth.client_principal(
                pool, context.invocation_metadata(), context.auth_context(), context.peer()
            )
        except AuthError as exc:
            raise StreamError(exc.code, exc.details, "credentials") from None

    def _names(self, names: frozenset[str]) -> frozenset[str]:
        """`names` (checked already), as one set shared by every stream that
        subscribes to the same names (most streams name one pool). The
        shared sets hold at most MAX_SHARED_NAME_SETS sets and
        MAX_SHARED_NAMES names: past either, they start over."""
        shared = self._shared_names.get(names)
        if shared is None:
            if (
                len(self._shared_names) >= MAX_SHARED_NAME_SETS
                or self._shared_count + len(names) > MAX_SHARED_NAMES
            ):
                self._shared_names.clear()
                self._shared_count = 0
            shared = self._shared_names[names] = names
            self._shared_count += len(names)
        return shared

    def _handle(self, stream: AdsStream, request: Any, context: Any) -> None:
        index = TYPE_INDEX[request.type_url]
        state = stream.types[index]
        nonce = request.response_nonce
        if (
            state is not None
            and state.nonce
            and nonce == str(state.nonce)
            and frozenset(request.resource_names) == state.names
        ):
            # The common case, once per response: the client answers the
            # last response without changing its names. Not answered.
            self._answered(stream, index, state, request, context)
            return
        type_url = TYPES[index]  # the module's string, not the request's
        first = state is None
        names = frozenset(request.resource_names)
        if state is None or names != state.names:  # an ACK's names were checked before
            # Checked before they are shared: a refused set is never kept.
            self._check_names(type_url, names, first)
            names = self._names(names)
        else:
            names = state.names
        if state is None:
            state = stream.types[index] = _TypeState()
            self.table.track(stream.record, type_url, state)
        if state.nonce and nonce == str(state.nonce):
            self._answered(stream, index, state, request, context)
        elif nonce and names == state.names:
            return  # answers an older response: the newer one is on its way
        if names != state.names:
            for name in names - state.names:
                self._check_credentials(context, name)
            for name in state.names - names:
                self.hub.unwatch(type_url, name, stream)
            for name in names - state.names:
                self.hub.watch(type_url, name, stream)
            state.names = names
            state.force = state.dirty = True
        elif not nonce:
            # The type's first request on this stream, or a client that
            # starts over: it gets the current state whatever it holds.
            state.force = state.dirty = True
        stream.offer()

    def _answered(
        self, stream: AdsStream, index: int, state: _TypeState, request: Any, context: Any
    ) -> None:
        """Records an ACK or NACK of the stream's last response of a type."""
        if not request.HasField("error_detail"):
            _ACKS[index].inc()
            # The nonce names the response, and so the version accepted: the
            # client's version_info is its word only (a confused or hostile
            # client may name a version never sent).
            self.table.ack(state, state.version, state.version)
            return
        short = SHORT[TYPES[index]]
        error = request.error_detail.message
        metrics.XDS_NACKS.labels(short).inc()
        self.table.nack(stream.record, TYPES[index], state.version, error)
        self._log.warning(
            f"xds-nack:{short}",
            "ADS %s version %s refused by node=%s peer=%s (it keeps version %r): %s",
            short.upper(), state.version, stream.record.node_id or "?", context.peer(),
            request.version_info, error[:500],
        )  # fmt: skip
