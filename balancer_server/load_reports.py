"""Ingests ClientStats into Redis.

Reports are added up in memory per pool and written in one pipeline per
flush (about once a second), so thousands of reports per second cost a
handful of Redis round trips. A failed write keeps the counts and retries
them with the next flush: nothing is lost while Redis is briefly away.

Layout (see docs/redis-layout.md): per pool, a hash per 10-second bucket
`lookaside:{pool}:load:<unix_s // 10>` (expires after 16 minutes) and a
running total `lookaside:{pool}:load:total`. Fields: started, finished,
failed_to_send, known_received, reports, and drop:<token> per drop reason.

Reports from the Lookaside thin client also carry call outcomes per backend
(lookaside.lb.v1.ClientStatsExtension, inside the ClientStats). Those are
added to the pool's `lookaside:{pool}:outcomes` hash, which outlier
detection reads and resets once per interval.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
from collections import Counter

import redis.exceptions
from google.protobuf.message import DecodeError
from google.protobuf.unknown_fields import UnknownFieldSet

from balancer_server import metrics
from lookaside.asyncutil import cancel_and_wait, cancelling
from lookaside.proto.lb.v1 import backend_stats_pb2
from lookaside.proto.lb.v1 import load_balancer_pb2 as lb
from lookaside.registry import keys
from lookaside.registry.outlier import outcome_fields

log = logging.getLogger("lookaside.balancer")

BUCKET_SECONDS = 10
BUCKET_TTL_SECONDS = 16 * 60
OUTCOMES_TTL_SECONDS = 10 * 60
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
    )

    def __init__(self) -> None:
        self.reports = self.started = self.finished = 0
        self.failed_to_send = self.known_received = 0
        self.drops: Counter[str] = Counter()
        # per-backend outcome fields (lookaside.registry.outlier)
        self.outcomes: Counter[str] = Counter()

    def add(self, stats: lb.ClientStats) -> None:
        self.reports += 1
        self.started += stats.num_calls_started
        self.finished += stats.num_calls_finished
        self.failed_to_send += stats.num_calls_finished_with_client_failed_to_send
        self.known_received += stats.num_calls_finished_known_received
        for per_token in stats.calls_finished_with_drop:
            self.drops[per_token.load_balance_token] += per_token.num_calls
        if len(UnknownFieldSet(stats)):
            self.outcomes.update(backend_outcomes(stats))

    def merge(self, other: PoolSums) -> None:
        for name in ("reports", "started", "finished", "failed_to_send", "known_received"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.drops.update(other.drops)
        self.outcomes.update(other.outcomes)

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
        return out


def backend_outcomes(stats: lb.ClientStats) -> Counter[str]:
    """The per-backend outcome increments a report carries in its
    extension. Entries whose token names no backend are skipped."""
    out: Counter[str] = Counter()
    try:
        ext = backend_stats_pb2.ClientStatsExtension.FromString(stats.SerializeToString())
    except DecodeError:
        # Field 1001 that is not our extension: the rest of the report counts.
        metrics.REPORTS_MALFORMED.inc()
        return out
    for entry in ext.calls_per_backend[:MAX_BACKENDS_PER_REPORT]:
        backend_id = entry.load_balance_token.partition(".")[0]
        if not _BACKEND_ID.fullmatch(backend_id) or entry.num_calls_finished <= 0:
            continue
        received = min(max(entry.num_calls_finished_known_received, 0), entry.num_calls_finished)
        failed = min(
            max(entry.num_calls_finished_with_client_failed_to_send, 0), entry.num_calls_finished
        )
        out.update(outcome_fields(backend_id, entry.num_calls_finished, received, failed))
    return out


class LoadReportSink:
    def __init__(self, redis, *, replica_id: str, flush_interval: float = 1.0) -> None:  # type: ignore[no-untyped-def]
        self.redis = redis
        self.replica_id = replica_id
        self.flush_interval = flush_interval
        self._pending: dict[str, PoolSums] = {}
        self._stream_counts: dict[str, int] = {}
        self._task: asyncio.Task[None] | None = None

    def add(self, pool: str, stats: lb.ClientStats) -> None:
        sums = self._pending.get(pool)
        if sums is None:
            sums = self._pending[pool] = PoolSums()
        sums.add(stats)

    def set_stream_count(self, pool: str, count: int) -> None:
        self._stream_counts[pool] = count

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="load-report-flush")

    async def stop(self) -> None:
        if self._task:
            await cancel_and_wait([self._task])
        try:
            await self.flush()
            async with self.redis.pipeline(transaction=False) as pipe:
                for pool in self._stream_counts:
                    pipe.hdel(keys.streams(pool), self.replica_id)
                await pipe.execute()
        except (redis.exceptions.RedisError, OSError) as exc:
            log.warning("load reports: final flush failed (%s)", exc)

    async def _run(self) -> None:
        while not cancelling():
            await asyncio.sleep(self.flush_interval)
            try:
                await self.flush()
            except (redis.exceptions.RedisError, OSError) as exc:
                if cancelling():
                    raise
                metrics.REPORTS_FLUSH_ERRORS.inc()
                log.warning("load reports: flush failed, keeping counts for the next one (%s)", exc)

    async def flush(self) -> None:
        pending, self._pending = self._pending, {}
        now = time.time()
        bucket = int(now // BUCKET_SECONDS)
        try:
            async with self.redis.pipeline(transaction=False) as pipe:
                for pool, sums in pending.items():
                    bucket_key = keys.load_bucket(pool, bucket)
                    for field, value in sums.load_fields().items():
                        if value:
                            pipe.hincrby(bucket_key, field, value)
                            pipe.hincrby(keys.load_total(pool), field, value)
                    pipe.expire(bucket_key, BUCKET_TTL_SECONDS)
                    if sums.outcomes:
                        for field, value in sums.outcomes.items():
                            if value:
                                pipe.hincrby(keys.outcomes(pool), field, value)
                        pipe.expire(keys.outcomes(pool), OUTCOMES_TTL_SECONDS)
                stamp = int(now * 1000)
                for pool, count in self._stream_counts.items():
                    pipe.hset(
                        keys.streams(pool),
                        self.replica_id,
                        json.dumps({"streams": count, "ts_ms": stamp}),
                    )
                await pipe.execute()
        except BaseException:
            # Put the counts back so the next flush writes them.
            for pool, sums in pending.items():
                self._put_back(pool, sums)
            raise
        for pool, sums in pending.items():
            metrics.REPORTS_INGESTED.labels(pool).inc(sums.reports)

    def _put_back(self, pool: str, sums: PoolSums) -> None:
        current = self._pending.get(pool)
        if current is None:
            self._pending[pool] = sums
        else:
            current.merge(sums)
