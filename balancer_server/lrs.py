"""envoy.service.load_stats.v3.LoadReportingService/StreamLoadStats: load
reports from xDS clients, into the same pool load as grpclb's ClientStats.

A gRPC xDS client opens this stream to the server its bootstrap names when
a Cluster it uses has `lrs_server: {self: {}}` (gRFC A27), sends a first
request with its node, and from the first response on reports every
`load_reporting_interval`: per cluster, per locality the requests issued,
succeeded, failed and in progress since its previous report, and the
requests it dropped per drop category.

The balancer answers the first request with `send_all_clusters` and an
interval: the shortest report interval of the pools the stream reports on
(before its first report, of all pools), at least 1 s as C-core clamps
it; when the pools it reports on call for another interval, it sends a new
response. A stream ends when the client half-closes or goes away.

Each cluster's report is checked as grpclb reports are
(balancer_server.report_ingest) before it counts:

- its name (the Cluster's EDS service name, else its name) must be a pool
  (`no_pool`);
- it may come no sooner than the interval asked for allows, per pool
  (`too_fast`; limits.ReportPacer with the balancer's report burst);
- no count may exceed what the stream could have made since its last
  report of that pool: MAX_CALLS_PER_SECOND times the seconds elapsed,
  counted from at least one second, and at most MAX_LOCALITIES localities
  (`too_large`: the whole cluster report is refused);
- drop categories must be drops of the pool's configuration; others are
  removed (`unknown_drop_category`), the rest counts.

A report counts as a ClientStats would (and as C-core's grpclb client
counts): started = issued + dropped, finished = succeeded + failed +
dropped, known_received = succeeded (a failed request may or may not have
reached a backend; the count is a lower bound), each drop category as a
drop token, and drops without a category (`total_dropped_requests` beyond
the categories) under the token `xds-uncategorized`. It is counted under
the source `xds` too (balancer_server.load_reports), so the admin API and
the dashboard show it beside grpclb's.

Trust: LRS reports are never outlier evidence (they carry no per-backend
outcomes the balancer can match to what it sent). A pool that names
client credentials takes them here as on BalanceLoad (`authorization:
Bearer <client token>` or an mTLS client certificate of its
client_identities): a token that is not the pool's ends the stream with
UNAUTHENTICATED, and a stream without one is counted for display, as
grpclb reports of such streams are. The streams per client address are
limited as BalanceLoad's are, in a count of their own.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping
from typing import Any

import grpc
from envoy.config.endpoint.v3 import load_report_pb2
from envoy.service.load_stats.v3 import lrs_pb2
from google.protobuf.duration_pb2 import Duration
from google.protobuf.message import DecodeError

from balancer_server import metrics
from balancer_server.auth import AuthError, RegistrationAuth
from balancer_server.balance_load import DEFAULT_MAX_STREAMS_PER_ADDRESS
from balancer_server.limits import (
    MIN_REPORT_INTERVAL_MS,
    REPORT_BURST,
    RateLimitedLog,
    ReportPacer,
    StreamsPerAddress,
    client_network,
    refuse_stream,
)
from balancer_server.load_reports import LoadReportSink
from balancer_server.report_ingest import MAX_CALLS_PER_SECOND, MAX_ELAPSED_S, MIN_ELAPSED_S
from lookaside_proto.lb.v1 import load_balancer_pb2 as lb
from lookaside_registry.model import PoolSnapshot

log = logging.getLogger("lookaside.balancer")

SERVICE = "envoy.service.load_stats.v3.LoadReportingService"
SOURCE = "xds"
UNCATEGORIZED = "xds-uncategorized"  # no drop token can be this ([a-z0-9_])
DEFAULT_INTERVAL_MS = 10_000
MAX_LOCALITIES = 64
MAX_CLUSTERS_PER_REQUEST = 256
MAX_DROP_CATEGORIES = 64
MAX_NAME = 255


def _identity(b: bytes) -> bytes:
    return b


def response_payload(interval_ms: int) -> bytes:
    interval = Duration()
    interval.FromMilliseconds(interval_ms)
    return lrs_pb2.LoadStatsResponse(
        send_all_clusters=True, load_reporting_interval=interval
    ).SerializeToString()


class _PoolReports:
    __slots__ = ("pacer", "since")

    def __init__(self, pacer: ReportPacer) -> None:
        self.pacer = pacer
        self.since = pacer.clock()


class _LrsStream:
    __slots__ = ("context", "node_id", "interval_ms", "pools", "principals")

    def __init__(self, context: Any, node_id: str, interval_ms: int) -> None:
        self.context = context
        self.node_id = node_id
        self.interval_ms = interval_ms
        self.pools: dict[str, _PoolReports] = {}
        self.principals: dict[str, str | None] = {}


class LoadReportingService:
    """LRS over the pools the registry watcher holds (`pools`: pool name ->
    its current snapshot), counting into `sink`."""

    def __init__(
        self,
        pools: Mapping[str, PoolSnapshot],
        sink: LoadReportSink,
        *,
        auth: RegistrationAuth | None = None,
        max_streams_per_address: int = DEFAULT_MAX_STREAMS_PER_ADDRESS,
        report_burst: int = REPORT_BURST,
        initial_request_timeout: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.pools = pools
        self.sink = sink
        self.auth = auth
        self.per_address = StreamsPerAddress(max_streams_per_address)
        self.report_burst = report_burst
        self.initial_request_timeout = initial_request_timeout
        self.clock = clock
        self._log = RateLimitedLog(log)

    def handler(self) -> grpc.GenericRpcHandler:
        method = grpc.stream_stream_rpc_method_handler(
            self.stream_load_stats, request_deserializer=_identity, response_serializer=_identity
        )
        return grpc.method_handlers_generic_handler(SERVICE, {"StreamLoadStats": method})

    async def _refuse(
        self,
        context: Any,
        reason: str,
        details: str,
        code: grpc.StatusCode = grpc.StatusCode.INVALID_ARGUMENT,
    ) -> None:
        await refuse_stream(
            context, self._log, metrics.LRS_STREAMS_REFUSED, "LRS stream", reason, details, code
        )

    def _interval_for(self, names: Any) -> int:
        """The shortest report interval of the pools `names` (of all pools
        when none), at least what C-core accepts."""
        intervals = [
            snap.config.report_interval_ms
            for name in names
            if (snap := self.pools.get(name)) is not None
        ]
        if not intervals:
            return DEFAULT_INTERVAL_MS
        return max(min(intervals), MIN_REPORT_INTERVAL_MS)

    async def stream_load_stats(self, request_iterator: Any, context: Any) -> None:
        address = client_network(context.peer())
        if not self.per_address.acquire(address):
            metrics.LIMIT_REFUSALS.labels("lrs_streams_per_address").inc()
            await self._refuse(
                context,
                "streams_per_address",
                f"too many LRS streams from {address[:64]}: at most {self.per_address.limit} "
                "are allowed per client address (an IPv4 address or an IPv6 /64)",
                grpc.StatusCode.RESOURCE_EXHAUSTED,
            )
            return
        metrics.LRS_STREAMS_OPEN.inc()
        try:
            await self._serve(request_iterator, context)
        finally:
            metrics.LRS_STREAMS_OPEN.dec()
            self.per_address.release(address)

    @staticmethod
    def _read(raw: bytes) -> lrs_pb2.LoadStatsRequest | None:
        try:
            return lrs_pb2.LoadStatsRequest.FromString(raw)
        except DecodeError:
            return None

    async def _serve(self, request_iterator: Any, context: Any) -> None:
        try:
            raw = await asyncio.wait_for(
                anext(request_iterator, None), timeout=self.initial_request_timeout
            )
        except TimeoutError:
            await self._refuse(
                context,
                "timeout",
                f"no LoadStatsRequest within {self.initial_request_timeout:g}s of the stream's start",
            )
            return
        if raw is None:
            return
        first = self._read(raw)
        if first is None:
            await self._refuse(
                context, "malformed", "malformed LoadStatsRequest: not a valid protobuf message"
            )
            return
        named = {self._pool_of(cs) for cs in first.cluster_stats[:MAX_CLUSTERS_PER_REQUEST]}
        interval_ms = self._interval_for(named - {None} or self.pools.keys())
        stream = _LrsStream(context, first.node.id[:MAX_NAME], interval_ms)
        await context.write(response_payload(interval_ms))
        log.debug("LRS stream open node=%s peer=%s", stream.node_id, context.peer())
        await self._take(stream, first)
        async for raw in request_iterator:
            request = self._read(raw)
            if request is None:
                metrics.LRS_REPORTS_REFUSED.labels("malformed").inc()
                self._log.warning(
                    "lrs:malformed", "ignoring a malformed LoadStatsRequest node=%s peer=%s",
                    stream.node_id, context.peer(),
                )  # fmt: skip
                continue
            await self._take(stream, request)
            wanted = self._interval_for(stream.pools)
            if stream.pools and wanted != stream.interval_ms:
                stream.interval_ms = wanted
                await context.write(response_payload(wanted))
        log.debug("LRS stream closed node=%s peer=%s", stream.node_id, context.peer())

    def _pool_of(self, stats: load_report_pb2.ClusterStats) -> str | None:
        """The pool a cluster's report is about: its EDS service name, else
        its cluster name (Lookaside names both after the pool)."""
        for name in (stats.cluster_service_name, stats.cluster_name):
            if name and name in self.pools:
                return name
        return None

    async def _take(self, stream: _LrsStream, request: lrs_pb2.LoadStatsRequest) -> None:
        clusters = request.cluster_stats
        if len(clusters) > MAX_CLUSTERS_PER_REQUEST:
            metrics.LRS_REPORTS_REFUSED.labels("too_large").inc(
                len(clusters) - MAX_CLUSTERS_PER_REQUEST
            )
        for stats in clusters[:MAX_CLUSTERS_PER_REQUEST]:
            pool = self._pool_of(stats)
            if pool is None:
                metrics.LRS_REPORTS_REFUSED.labels("no_pool").inc()
                continue
            if pool not in stream.principals:
                try:
                    stream.principals[pool] = self._principal(stream.context, pool)
                except AuthError as exc:
                    await self._refuse(stream.context, exc.reason, exc.details, exc.code)
                    return
            counted = self.check(stream, pool, stats)
            if counted is not None:
                metrics.LRS_REPORTS.labels(pool).inc()
                self.sink.add(pool, counted, "", SOURCE)

    def _principal(self, context: Any, pool: str) -> str | None:
        if self.auth is None:
            return "anonymous"
        return self.auth.client_principal(
            pool, context.invocation_metadata(), context.auth_context(), context.peer()
        )

    def check(
        self, stream: _LrsStream, pool: str, stats: load_report_pb2.ClusterStats
    ) -> lb.ClientStats | None:
        """The report as ClientStats to count, or None when refused."""
        now = self.clock()
        reports = stream.pools.get(pool)
        if reports is None:
            reports = stream.pools[pool] = _PoolReports(ReportPacer(self.clock, self.report_burst))
        if not reports.pacer.admit(stream.interval_ms):
            metrics.LRS_REPORTS_REFUSED.labels("too_fast").inc()
            return None
        elapsed = min(max(now - reports.since, MIN_ELAPSED_S), MAX_ELAPSED_S)
        reports.since = now
        bound = int(MAX_CALLS_PER_SECOND * elapsed)
        localities = stats.upstream_locality_stats
        if len(localities) > MAX_LOCALITIES or len(stats.dropped_requests) > MAX_DROP_CATEGORIES:
            metrics.LRS_REPORTS_REFUSED.labels("too_large").inc()
            return None
        issued = sum(x.total_issued_requests for x in localities)
        succeeded = sum(x.total_successful_requests for x in localities)
        failed = sum(x.total_error_requests for x in localities)
        categorized = sum(d.dropped_count for d in stats.dropped_requests)
        dropped = max(stats.total_dropped_requests, categorized)
        if max(issued, succeeded + failed, dropped) > bound:
            metrics.LRS_REPORTS_REFUSED.labels("too_large").inc()
            return None
        snapshot = self.pools.get(pool)
        known = {d.token for d in snapshot.config.drops} if snapshot is not None else set()
        drops: dict[str, int] = {}
        for entry in stats.dropped_requests:
            if entry.category not in known:
                metrics.LRS_REPORTS_REFUSED.labels("unknown_drop_category").inc()
            elif entry.dropped_count:
                drops[entry.category] = drops.get(entry.category, 0) + entry.dropped_count
        if stats.total_dropped_requests > categorized:
            drops[UNCATEGORIZED] = stats.total_dropped_requests - categorized
        dropped = sum(drops.values())
        return lb.ClientStats(
            num_calls_started=issued + dropped,
            num_calls_finished=succeeded + failed + dropped,
            num_calls_finished_known_received=succeeded,
            calls_finished_with_drop=[
                lb.ClientStatsPerToken(load_balance_token=t, num_calls=n)
                for t, n in sorted(drops.items())
            ],
        )
