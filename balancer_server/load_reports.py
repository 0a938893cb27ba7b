"""Ingests ClientStats into Redis.

Reports are added up in memory per pool and written to the registry once
per flush (about once a second): RegistryStore.flush_reports, one pipeline
of a script per pool and the stream counts, so thousands of reports per
second cost one Redis round trip a second per balancer process. A failed
write keeps the batch and retries it with the next flush under the same
id: nothing is lost while Redis is briefly away, and nothing is counted
twice when a write reached Redis but its reply did not.

The registry keeps, per pool, a bucket per 10 seconds and a running total
(docs/redis-layout.md). Fields: started, finished, failed_to_send,
known_received, reports, and drop:<token> per drop reason.

Reports that did not come over grpclb are counted a second time under
their source: LRS load reports from xDS clients (balancer_server.lrs) also
add to `xds:started`, `xds:finished`, ... and `xds:dropped`, so readers can
tell the two apart (lookaside_registry.load: grpclb's share is the total
less the other sources').

Reports from the Lookaside thin client also carry call outcomes per backend
(lookaside.lb.v1.ClientStatsExtension, inside the ClientStats). Those are
added to the pool's outcome totals, which no reader resets (outlier
detection, the dashboard and the metrics each take their own differences):
every report's as display counts, and the reports of streams that may eject
(BalanceLoadService decides: docs/security.md) also as evidence, with the
stream named as an accuser of each backend it reported lost calls against.
"""

from __future__ import annotations

import asyncio
import logging
import re
import secrets
import time
from collections import Counter

from google.protobuf.message import DecodeError
from google.protobuf.unknown_fields import UnknownFieldSet

from balancer_server import metrics
from lookaside_proto.lb.v1 import backend_stats_pb2
from lookaside_proto.lb.v1 import load_balancer_pb2 as lb
from lookaside_registry.asyncutil import cancel_and_wait, cancelling
from lookaside_registry.errors import Unavailable
from lookaside_registry.outlier import outcome_fields
from lookaside_registry.port import ReportPort
from lookaside_registry.reports import bucket_of

log = logging.getLogger("lookaside.balancer")

# Batches kept while the registry is unreachable (one per flush).
MAX_UNACKED_BATCHES = 900
# Tokens are "<backend id>.<epoch>" (balancer_server.lists).
_BACKEND_ID = re.compile(r"[0-9a-f]{12}")
MAX_BACKENDS_PER_REPORT = 1000


class PoolSums:
    """One pool's report counts since the last flush. Plain attributes: the
    add is on the path of every report."""

    __slots__ = (
        "reports",
        "started",
        "finished",
        "failed_to_send",
        "known_received",
        "drops",
        "outcomes",
        "accusers",
        "sources",
    )

    def __init__(self) -> None:
        self.reports = self.started = self.finished = 0
        self.failed_to_send = self.known_received = 0
        self.drops: Counter[str] = Counter()
        # per-backend outcome fields (lookaside_registry.outlier)
        self.outcomes: Counter[str] = Counter()
        # "<backend id>|<stream>": evidence streams that reported lost calls
        self.accusers: set[str] = set()
        # per source other than grpclb: its own share of the counters
        self.sources: dict[str, Counter[str]] = {}

    def add(self, stats: lb.ClientStats, stream: str = "", source: str = "") -> None:
        """Counts a report; with `stream` (the id of a stream whose reports
        may eject), its outcomes count as evidence too; with `source` (a
        name in lookaside_registry.load.SOURCES), under that source too."""
        if source:
            own = self.sources.get(source)
            if own is None:
                own = self.sources[source] = Counter()
            own["reports"] += 1
            own["started"] += stats.num_calls_started
            own["finished"] += stats.num_calls_finished
            own["failed_to_send"] += stats.num_calls_finished_with_client_failed_to_send
            own["known_received"] += stats.num_calls_finished_known_received
            own["dropped"] += sum(d.num_calls for d in stats.calls_finished_with_drop)
        self.reports += 1
        self.started += stats.num_calls_started
        self.finished += stats.num_calls_finished
        self.failed_to_send += stats.num_calls_finished_with_client_failed_to_send
        self.known_received += stats.num_calls_finished_known_received
        drops = stats.calls_finished_with_drop
        if drops:
            for per_token in drops:
                self.drops[per_token.load_balance_token] += per_token.num_calls
        if len(UnknownFieldSet(stats)):
            for bid, *counts in backend_rows(stats):
                self.outcomes.update(outcome_fields(bid, *counts))
                if stream:
                    self.outcomes.update(outcome_fields(bid, *counts, evidence=True))
                    finished, received, _, deadline = counts
                    if finished > received or deadline > 0:
                        self.accusers.add(f"{bid}|{stream}")

    def merge(self, other: PoolSums) -> None:
        for name in ("reports", "started", "finished", "failed_to_send", "known_received"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.drops.update(other.drops)
        self.outcomes.update(other.outcomes)
        self.accusers |= other.accusers
        for source, counts in other.sources.items():
            self.sources.setdefault(source, Counter()).update(counts)

    def load_fields(self) -> dict[str, int]:
        """The load bucket fields: the counters and drop:<token>."""
        out = {
            "reports": self.reports,
            "started": self.started,
            "finished": self.finished,
            "failed_to_send": self.failed_to_send,
            "known_received": self.known_received,
        }
        out.update({f"drop:{token}": n for token, n in self.drops.items()})
        for source, counts in self.sources.items():
            out.update({f"{source}:{name}": n for name, n in counts.items()})
        return out


def backend_rows(stats: lb.ClientStats) -> list[tuple[str, int, int, int, int]]:
    """The per-backend outcomes a report carries in its extension: (backend
    id, finished, received, failed to send, deadline exceeded), each count
    clamped to what finished. Entries whose token names no backend are
    skipped."""
    try:
        ext = backend_stats_pb2.ClientStatsExtension.FromString(stats.SerializeToString())
    except DecodeError:
        # Field 1001 that is not our extension: the rest of the report counts.
        metrics.REPORTS_MALFORMED.inc()
        return []
    out = []
    for entry in ext.calls_per_backend[:MAX_BACKENDS_PER_REPORT]:
        backend_id = entry.load_balance_token.partition(".")[0]
        finished = entry.num_calls_finished
        if not _BACKEND_ID.fullmatch(backend_id) or finished <= 0:
            continue
        out.append(
            (
                backend_id,
                finished,
                _clamp(entry.num_calls_finished_known_received, finished),
                _clamp(entry.num_calls_finished_with_client_failed_to_send, finished),
                _clamp(entry.num_calls_finished_with_deadline_exceeded, finished),
            )
        )
    return out


def _clamp(n: int, most: int) -> int:
    return min(max(n, 0), most)


class LoadReportSink:
    """Sums reports in memory and flushes them to the registry. Each flush is
    a batch with its own id, kept until the registry has taken it: a
    failed flush is retried with the same id, which the registry counts
    once even when the failed attempt had reached it."""

    def __init__(self, store: ReportPort, *, replica_id: str, flush_interval: float = 1.0) -> None:
        self.store = store
        self.replica_id = replica_id
        self.flush_interval = flush_interval
        self._pending: dict[str, PoolSums] = {}
        self._unacked: list[_Batch] = []
        self._stream_counts: dict[str, int] = {}
        self._task: asyncio.Task[None] | None = None

    def add(self, pool: str, stats: lb.ClientStats, stream: str = "", source: str = "") -> None:
        """Counts a report of `pool`; `stream` names a stream whose reports
        may eject, `source` a source other than grpclb (see PoolSums.add)."""
        sums = self._pending.get(pool)
        if sums is None:
            sums = self._pending[pool] = PoolSums()
        sums.add(stats, stream, source)

    def set_stream_count(self, pool: str, count: int) -> None:
        self._stream_counts[pool] = count

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="load-report-flush")

    async def stop(self) -> None:
        if self._task:
            await cancel_and_wait([self._task])
        try:
            await self.flush()
            await self.store.clear_stream_counts(self.replica_id, self._stream_counts)
        except Unavailable as exc:
            log.warning("load reports: final flush failed (%s)", exc)

    async def _run(self) -> None:
        while not cancelling():
            await asyncio.sleep(self.flush_interval)
            try:
                await self.flush()
            except Unavailable as exc:
                if cancelling():
                    raise
                metrics.REPORTS_FLUSH_ERRORS.inc()
                log.warning("load reports: flush failed, keeping counts for the next one (%s)", exc)

    async def flush(self) -> None:
        """Writes every batch not yet taken, oldest first, each in one
        pipeline with the stream counts (one round trip when Redis keeps up)."""
        if self._pending:
            pending, self._pending = self._pending, {}
            self._unacked.append(_Batch(secrets.token_hex(8), bucket_of(time.time()), pending))
            if len(self._unacked) > MAX_UNACKED_BATCHES:
                lost = self._unacked.pop(0)
                log.warning("load reports: dropping batch %s after %d failed flushes",
                            lost.id, MAX_UNACKED_BATCHES)  # fmt: skip
        counts: dict[str, int] | None = dict(self._stream_counts)
        while self._unacked:
            batch = self._unacked[0]
            await self.store.flush_reports(
                batch.id,
                batch.bucket,
                {p: (s.load_fields(), s.outcomes, s.accusers) for p, s in batch.pools.items()},
                self.replica_id,
                counts,
            )
            counts = None
            self._unacked.pop(0)
            for pool, sums in batch.pools.items():
                metrics.REPORTS_INGESTED.labels(pool).inc(sums.reports)
        if counts:
            await self.store.set_stream_counts(self.replica_id, counts)


class _Batch:
    __slots__ = ("id", "bucket", "pools")

    def __init__(self, batch_id: str, bucket: int, pools: dict[str, PoolSums]) -> None:
        self.id = batch_id
        self.bucket = bucket
        self.pools = pools
