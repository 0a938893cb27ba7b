"""Reading what clients reported: load windows and stream counts per pool.

The balancer's LoadReportSink (balancer_server/load_reports.py) writes a
hash per 10-second bucket, `lookaside:{pool}:load:<unix_s // 10>`, and one
hash per pool of client streams per replica. This module only reads them,
so any front end (the admin API, a CLI) can show the same numbers.

Reports from sources other than grpclb (LRS from xDS clients) are counted
twice in a bucket: in the fields above, and under `<source>:<counter>`
(SOURCES; counters SOURCE_COUNTERS). A window's `by_source()` gives each
source's share, grpclb's being what the others leave.

A window of W seconds sums the buckets that overlap [now - W, now]: its
span runs from the start of the oldest bucket to now, so it is between W
and W + 10 seconds long, and rates are counts divided by that span.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import redis.asyncio as aioredis

from lookaside_registry import keys

BUCKET_SECONDS = 10
# name -> seconds, shortest first
WINDOWS: dict[str, int] = {"10s": 10, "1m": 60, "15m": 900}
COUNTERS = ("started", "finished", "failed_to_send", "known_received", "reports")
DROP_PREFIX = "drop:"
# Report sources counted apart besides grpclb, and what is counted per source.
SOURCES = ("xds",)
SOURCE_COUNTERS = (*COUNTERS, "dropped")
STREAMS_STALE_MS = 10_000
# A replica's stream count this old is removed when the hash is read (a
# replica killed without its clean stop leaves its entry; its id is never
# used again), and a streams hash no replica wrote for this long expires.
STREAMS_FORGET_MS = 60 * STREAMS_STALE_MS
# Pools read per round trip by read_pools_streams.
PIPELINE_POOLS = 500


@dataclass(frozen=True, slots=True)
class LoadWindow:
    """Counts summed over one window, and the seconds they cover."""

    name: str
    seconds: float
    counts: dict[str, int]
    drops: dict[str, int] = field(default_factory=dict)
    # source (SOURCES) -> its own share of the counts, "dropped" included
    sources: dict[str, dict[str, int]] = field(default_factory=dict)

    def by_source(self) -> dict[str, dict[str, int]]:
        """Counts per source: each of SOURCES as counted, and grpclb as the
        rest of the totals (never below zero)."""
        out = {s: {c: self.sources.get(s, {}).get(c, 0) for c in SOURCE_COUNTERS} for s in SOURCES}
        whole = {**self.counts, "dropped": sum(self.drops.values())}
        out["grpclb"] = {
            c: max(0, whole.get(c, 0) - sum(out[s][c] for s in SOURCES)) for c in SOURCE_COUNTERS
        }
        return {"grpclb": out.pop("grpclb"), **out}

    def rate(self, counter: str) -> float:
        if self.seconds <= 0:
            return 0.0
        return self.counts.get(counter, 0) / self.seconds

    @property
    def drops_per_second(self) -> float:
        if self.seconds <= 0:
            return 0.0
        return sum(self.drops.values()) / self.seconds


@dataclass(frozen=True, slots=True)
class ReplicaStreams:
    replica: str
    streams: int
    ts_ms: int


def _text(value: bytes | str) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else value


def _int(value: Any) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        return 0


def sum_buckets(buckets: dict[int, dict[Any, Any]], now: float) -> list[LoadWindow]:
    """Sums bucket hashes (bucket number -> raw hash) into every window."""
    current = int(now // BUCKET_SECONDS)
    out: list[LoadWindow] = []
    for name, seconds in WINDOWS.items():
        first = int((now - seconds) // BUCKET_SECONDS)
        counts: Counter[str] = Counter({c: 0 for c in COUNTERS})
        drops: Counter[str] = Counter()
        sources: dict[str, Counter[str]] = {s: Counter() for s in SOURCES}
        for bucket in range(first, current + 1):
            for raw_field, raw_value in buckets.get(bucket, {}).items():
                fname = _text(raw_field)
                if fname.startswith(DROP_PREFIX):
                    drops[fname[len(DROP_PREFIX) :]] += _int(raw_value)
                elif fname in counts:
                    counts[fname] += _int(raw_value)
                else:
                    source, _, counter = fname.partition(":")
                    if source in sources and counter in SOURCE_COUNTERS:
                        sources[source][counter] += _int(raw_value)
        span = max(now - first * BUCKET_SECONDS, 0.0)
        out.append(
            LoadWindow(
                name,
                round(span, 3),
                dict(counts),
                dict(drops),
                {s: dict(c) for s, c in sources.items()},
            )
        )
    return out


async def read_windows(
    redis: aioredis.Redis, pool: str, now: float | None = None
) -> list[LoadWindow]:
    """The pool's client reports over every window in WINDOWS."""
    now = time.time() if now is None else now
    current = int(now // BUCKET_SECONDS)
    first = int((now - max(WINDOWS.values())) // BUCKET_SECONDS)
    numbers = list(range(first, current + 1))
    async with redis.pipeline(transaction=False) as pipe:
        for bucket in numbers:
            pipe.hgetall(keys.load_bucket(pool, bucket))
        hashes = await pipe.execute()
    return sum_buckets(dict(zip(numbers, hashes, strict=True)), now)


async def read_total(redis: aioredis.Redis, pool: str) -> dict[str, int]:
    """The running totals since the pool's first report."""
    raw = await redis.hgetall(keys.load_total(pool))
    return {_text(k): _int(v) for k, v in raw.items()}


async def read_streams(
    redis: aioredis.Redis,
    pool: str,
    now_ms: int | None = None,
    stale_ms: int = STREAMS_STALE_MS,
) -> list[ReplicaStreams]:
    """Client streams per balancer replica, leaving out entries that a
    replica has not refreshed within stale_ms (it is gone or cut off)."""
    raw = await redis.hgetall(keys.streams(pool))
    gone = forgotten_streams(raw)
    if gone:
        await redis.hdel(keys.streams(pool), *gone)
    return parse_streams(raw, now_ms, stale_ms)


async def read_pools_streams(
    redis: aioredis.Redis, pools: list[str], now_ms: int | None = None
) -> dict[str, list[ReplicaStreams]]:
    """read_streams of many pools, in one round trip per PIPELINE_POOLS
    pools (not one per pool)."""
    out: dict[str, list[ReplicaStreams]] = {}
    for start in range(0, len(pools), PIPELINE_POOLS):
        chunk = pools[start : start + PIPELINE_POOLS]
        async with redis.pipeline(transaction=False) as pipe:
            for pool in chunk:
                pipe.hgetall(keys.streams(pool))
            found = await pipe.execute()
        for pool, raw in zip(chunk, found, strict=True):
            gone = forgotten_streams(raw)
            if gone:
                await redis.hdel(keys.streams(pool), *gone)
            out[pool] = parse_streams(raw, now_ms)
    return out


def forgotten_streams(raw: Mapping[Any, Any], now_ms: int | None = None) -> list[str]:
    """The replicas of the streams hash `raw` whose entries are older than
    STREAMS_FORGET_MS (by this host's clock) or unreadable: to remove."""
    now_ms = int(time.time() * 1000) if now_ms is None else now_ms
    out = []
    for replica, value in raw.items():
        try:
            ts_ms = int(json.loads(value)["ts_ms"])
        except (ValueError, TypeError, KeyError):
            ts_ms = 0
        if now_ms - ts_ms > STREAMS_FORGET_MS:
            out.append(_text(replica))
    return out


def parse_streams(
    raw: Mapping[Any, Any], now_ms: int | None = None, stale_ms: int = STREAMS_STALE_MS
) -> list[ReplicaStreams]:
    """Stream counts from the streams hash, leaving out stale entries."""
    now_ms = int(time.time() * 1000) if now_ms is None else now_ms
    out: list[ReplicaStreams] = []
    for replica, value in raw.items():
        try:
            data = json.loads(value)
            streams, ts_ms = int(data["streams"]), int(data["ts_ms"])
        except (ValueError, TypeError, KeyError):
            continue
        if now_ms - ts_ms > stale_ms:
            continue
        out.append(ReplicaStreams(_text(replica), streams, ts_ms))
    return sorted(out, key=lambda r: r.replica)
