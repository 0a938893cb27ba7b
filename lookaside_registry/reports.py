"""What balancer replicas write besides backends: client load reports,
open stream counts and replica membership. Part of RegistryStore.

A load report flush is idempotent: each batch carries an id, and the
script that adds it to a pool first sets a marker for that id. A flush
whose reply was lost is retried with the same id and counts once. A
balancer's flush (`flush_reports`) is one pipeline: a script per pool and
the stream counts, in one round trip.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Mapping
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import NoScriptError

from lookaside_registry import keys, load, lua, xds
from lookaside_registry.errors import guarded
from lookaside_registry.load import BUCKET_SECONDS, LoadWindow, ReplicaStreams
from lookaside_registry.outlier import ACCUSERS_KEEP_MS, OUTCOMES_TTL_SECONDS, count_accusers
from lookaside_registry.xds import ReplicaXdsStreams

BUCKET_TTL_SECONDS = 16 * 60
# A retried batch is recognised for this long.
BATCH_MARKER_TTL_SECONDS = 15 * 60

# KEYS: marker, bucket, total, outcomes, accusers
# ARGV: bucket ttl s, outcomes ttl s, load fields json, outcome fields json, marker ttl s,
#       accusers json ["<backend id>|<stream>", ...], accusers kept ms
# Outcomes are running totals: added to, never reset by a reader. An
# accusation (a stream that reported lost calls against a backend) is
# stamped with the server's time; older ones than `kept` are dropped.
ADD_REPORTS = """
if not redis.call('SET', KEYS[1], '1', 'NX', 'EX', tonumber(ARGV[5])) then return 0 end
for f, n in pairs(cjson.decode(ARGV[3])) do
  redis.call('HINCRBY', KEYS[2], f, n)
  redis.call('HINCRBY', KEYS[3], f, n)
end
redis.call('EXPIRE', KEYS[2], tonumber(ARGV[1]))
local outcomes = cjson.decode(ARGV[4])
if next(outcomes) ~= nil then
  for f, n in pairs(outcomes) do redis.call('HINCRBY', KEYS[4], f, n) end
  redis.call('EXPIRE', KEYS[4], tonumber(ARGV[2]))
end
local accused = cjson.decode(ARGV[6] or '[]')
if #accused > 0 then
  -- stamped in ms with the microseconds as a fraction: the judge reads
  -- after its previous reading, so two scripts must never share a stamp
  local t = redis.call('TIME')
  local now = tonumber(t[1]) * 1000 + tonumber(t[2]) / 1000
  for _, m in ipairs(accused) do redis.call('ZADD', KEYS[5], now, m) end
  redis.call('ZREMRANGEBYSCORE', KEYS[5], '-inf', now - tonumber(ARGV[7]))
  redis.call('EXPIRE', KEYS[5], tonumber(ARGV[2]))
end
return 1
"""

# KEYS: replicas ; ARGV: replica id, stale ms. Server time; returns live ids.
TOUCH_REPLICA = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('HSET', KEYS[1], ARGV[1], now)
local seen = redis.call('HGETALL', KEYS[1])
local live = {}
for i = 1, #seen, 2 do
  local age = now - (tonumber(seen[i + 1]) or 0)
  if age <= tonumber(ARGV[2]) then table.insert(live, seen[i])
  elseif age > 100 * tonumber(ARGV[2]) then redis.call('HDEL', KEYS[1], seen[i]) end
end
return live
"""


def bucket_of(now: float) -> int:
    return int(now // BUCKET_SECONDS)


# One pool's part of a flush: load fields, outcome fields, accusers.
PoolReport = tuple[Mapping[str, int], Mapping[str, int], Iterable[str]]


def _add_reports_call(
    pool: str,
    batch_id: str,
    bucket: int,
    fields: Mapping[str, int],
    outcomes: Mapping[str, int] | None,
    accusers: Iterable[str],
) -> tuple[list[str], list[str | int]]:
    """The keys and arguments of ADD_REPORTS for one pool's batch."""
    return (
        [
            keys.pool_key(pool, f"batch:{batch_id}"),
            keys.load_bucket(pool, bucket),
            keys.load_total(pool),
            keys.outcomes(pool),
            keys.accusers(pool),
        ],
        [
            BUCKET_TTL_SECONDS,
            OUTCOMES_TTL_SECONDS,
            json.dumps({f: n for f, n in fields.items() if n}),
            json.dumps({f: n for f, n in (outcomes or {}).items() if n}),
            BATCH_MARKER_TTL_SECONDS,
            json.dumps(sorted(accusers)),
            ACCUSERS_KEEP_MS,
        ],
    )


# How often set_xds_streams looks for entries of replicas long gone.
XDS_SWEEP_S = 60.0


def _stream_entry(count: int, stamp: int) -> str:
    return json.dumps({"streams": count, "ts_ms": stamp})


class ReportOps:
    """Load reports, stream counts and replica membership."""

    def __init__(self, redis: aioredis.Redis) -> None:
        self._add_reports = lua.Script(redis, ADD_REPORTS)
        self._touch = lua.Script(redis, TOUCH_REPLICA)
        self._redis = redis
        # When set_xds_streams last looked for entries of replicas long gone.
        self._xds_swept = -XDS_SWEEP_S

    @guarded
    async def add_reports(
        self,
        pool: str,
        batch_id: str,
        bucket: int,
        fields: Mapping[str, int],
        outcomes: Mapping[str, int] | None = None,
        accusers: Iterable[str] = (),
    ) -> bool:
        """Adds one batch of a pool's summed reports to its bucket and total,
        its outcomes to the running totals, and stamps its accusations
        ("<backend id>|<stream>"). False when this batch id was added before."""
        keys_, args = _add_reports_call(pool, batch_id, bucket, fields, outcomes, accusers)
        return bool(await self._add_reports(keys=keys_, args=args))

    @guarded
    async def flush_reports(
        self,
        batch_id: str,
        bucket: int,
        pools: Mapping[str, PoolReport],
        replica: str = "",
        stream_counts: Mapping[str, int] | None = None,
    ) -> None:
        """One balancer flush in one pipeline (one round trip): each pool's
        batch as add_reports adds it, then `replica`'s stream counts. It
        either all reached Redis or raises; a retry with the same id counts
        no batch twice."""
        script = self._add_reports
        for attempt in (1, 2):
            if not script._loaded:
                await script._load()
            stamp = int(time.time() * 1000)
            async with self._redis.pipeline(transaction=False) as pipe:
                for pool, (fields, outcomes, accusers) in pools.items():
                    keys_, args = _add_reports_call(
                        pool, batch_id, bucket, fields, outcomes, accusers
                    )
                    pipe.evalsha(script.sha, len(keys_), *keys_, *args)
                for pool, count in (stream_counts or {}).items():
                    pipe.hset(keys.streams(pool), replica, _stream_entry(count, stamp))
                    pipe.pexpire(keys.streams(pool), load.STREAMS_FORGET_MS)
                results = await pipe.execute(raise_on_error=False)
            errors = [r for r in results if isinstance(r, Exception)]
            if attempt == 1 and any(isinstance(e, NoScriptError) for e in errors):
                script._loaded = False  # Redis lost its scripts: load, run again
                continue
            if errors:
                raise errors[0]
            return

    @guarded
    async def accusers_since(self, pool: str, since_ms: int) -> dict[str, int]:
        """Distinct streams per backend that reported lost calls against it
        after since_ms (Redis server time)."""
        members = await self._redis.zrangebyscore(keys.accusers(pool), f"({since_ms}", "+inf")
        return count_accusers(m for m in members if isinstance(m, bytes | str))

    @guarded
    async def set_stream_counts(self, replica: str, counts: Mapping[str, int]) -> None:
        stamp = int(time.time() * 1000)
        async with self._redis.pipeline(transaction=False) as pipe:
            for pool, count in counts.items():
                pipe.hset(keys.streams(pool), replica, _stream_entry(count, stamp))
                pipe.pexpire(keys.streams(pool), load.STREAMS_FORGET_MS)
            await pipe.execute()

    @guarded
    async def clear_stream_counts(self, replica: str, pools: Iterable[str]) -> None:
        async with self._redis.pipeline(transaction=False) as pipe:
            for pool in pools:
                pipe.hdel(keys.streams(pool), replica)
            await pipe.execute()

    @guarded
    async def load_windows(self, pool: str, now: float | None = None) -> list[LoadWindow]:
        return await load.read_windows(self._redis, pool, now)

    @guarded
    async def load_total(self, pool: str) -> dict[str, int]:
        return await load.read_total(self._redis, pool)

    @guarded
    async def replica_streams(self, pool: str, now_ms: int | None = None) -> list[ReplicaStreams]:
        return await load.read_streams(self._redis, pool, now_ms)

    @guarded
    async def pools_streams(
        self, pools: list[str], now_ms: int | None = None
    ) -> dict[str, list[ReplicaStreams]]:
        return await load.read_pools_streams(self._redis, pools, now_ms)

    @guarded
    async def set_xds_streams(
        self, replica: str, streams: list[dict[str, Any]], total: int
    ) -> None:
        """Writes this replica's open xDS streams (lookaside_registry.xds),
        removing entries of replicas long gone: those are looked for at most
        every XDS_SWEEP_S (they are read whole, every replica's entry of up
        to hundreds of kilobytes, and replicas write about every second)."""
        now_ms = int(time.time() * 1000)
        gone: list[str] = []
        if time.monotonic() - self._xds_swept >= XDS_SWEEP_S:
            self._xds_swept = time.monotonic()
            gone = xds.forgotten(await self._redis.hgetall(keys.XDS_STREAMS), now_ms)
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.hset(keys.XDS_STREAMS, replica, xds.entry(total, streams, now_ms))
            for name in gone:
                if name != replica:
                    pipe.hdel(keys.XDS_STREAMS, name)
            await pipe.execute()

    @guarded
    async def clear_xds_streams(self, replica: str) -> None:
        await self._redis.hdel(keys.XDS_STREAMS, replica)

    @guarded
    async def xds_streams(self, now_ms: int | None = None) -> list[ReplicaXdsStreams]:
        """Every live replica's open xDS streams."""
        return xds.parse_entries(await self._redis.hgetall(keys.XDS_STREAMS), now_ms)

    @guarded
    async def touch_replica(self, replica: str, stale_ms: int) -> list[str]:
        """Marks `replica` alive (server time) and returns the replicas seen
        within stale_ms."""
        live = await self._touch(keys=[keys.REPLICAS], args=[replica, stale_ms])
        return sorted(v.decode() if isinstance(v, bytes) else str(v) for v in live)

    @guarded
    async def forget_replica(self, replica: str) -> None:
        await self._redis.hdel(keys.REPLICAS, replica)
