"""The admin's golden-signal history and what it reads to take a sample:
stored samples, client-reported call rates and outcome counters. Part of
RegistryStore and MemoryStore.

A sample is a JSON object with a `ts_ms`; what else it holds is the
sampler's business (admin_api.signals). Samples are kept per pool in the
hash `lookaside:{pool}:signals`, one field per SLOT_SECONDS slot (its
number, unix seconds // SLOT_SECONDS), so two admin replicas sampling the
same slot overwrite each other instead of doubling it. Each write drops the
slots older than HISTORY_SECONDS in the same script, and the hash expires
HISTORY_SECONDS after the last write.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis

from lookaside_registry import keys, lua
from lookaside_registry.errors import guarded
from lookaside_registry.load import BUCKET_SECONDS
from lookaside_registry.outlier import Outcomes, parse_outcomes

SLOT_SECONDS = 5
HISTORY_SECONDS = 30 * 60
# Client-reported call rates cover the load buckets the balancers keep.
CALL_RATE_SECONDS = 15 * 60

# KEYS: signals ; ARGV: slot, sample json, oldest slot kept, ttl s.
# Returns how many old samples it dropped.
PUT_SAMPLE = """
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
local oldest, dropped = tonumber(ARGV[3]), 0
for _, f in ipairs(redis.call('HKEYS', KEYS[1])) do
  if not string.match(f, '^%-?%d+$') or tonumber(f) < oldest then
    redis.call('HDEL', KEYS[1], f)
    dropped = dropped + 1
  end
end
redis.call('EXPIRE', KEYS[1], tonumber(ARGV[4]))
return dropped
"""

_SLOT = re.compile(r"-?[0-9]+")


@dataclass(frozen=True, slots=True)
class CallRate:
    """Calls per second that clients reported finishing in one load bucket."""

    ts_ms: int  # the bucket's start
    calls_per_s: float


def slot_of(now: float) -> int:
    return int(now // SLOT_SECONDS)


def oldest_slot(slot: int) -> int:
    """The oldest slot kept once `slot` is written."""
    return slot - HISTORY_SECONDS // SLOT_SECONDS


def slot_number(field: bytes | str) -> int | None:
    text = field.decode(errors="replace") if isinstance(field, bytes) else field
    return int(text) if _SLOT.fullmatch(text) else None


def encode_sample(sample: Mapping[str, Any]) -> str:
    return json.dumps(sample, separators=(",", ":"))


def stale_slots(fields: Iterable[bytes | str], slot: int) -> list[bytes | str]:
    """The fields that writing `slot` drops (PUT_SAMPLE's rule)."""
    oldest = oldest_slot(slot)
    return [f for f in fields if (n := slot_number(f)) is None or n < oldest]


def history_since(raw: Mapping[Any, Any], since_ms: int) -> list[dict[str, Any]]:
    """The stored samples (field -> JSON) from since_ms on, oldest first;
    values that are not a sample are passed over."""
    out = []
    for field, value in raw.items():
        slot = slot_number(field)
        if slot is None or slot * SLOT_SECONDS * 1000 < since_ms - SLOT_SECONDS * 1000:
            continue
        try:
            sample = json.loads(value)
        except ValueError:
            continue
        if isinstance(sample, dict) and isinstance(ts := sample.get("ts_ms"), int):
            if ts >= since_ms:
                out.append(sample)
    return sorted(out, key=lambda s: int(s["ts_ms"]))


def call_rate_buckets(now: float, seconds: int = CALL_RATE_SECONDS) -> list[int]:
    """The numbers of the whole load buckets of the last `seconds`."""
    current = int(now // BUCKET_SECONDS)
    return list(range(current - seconds // BUCKET_SECONDS, current))


def call_rates(rows: Iterable[tuple[int, Any, Any]]) -> list[CallRate]:
    """(bucket, finished, reports) -> rates; a bucket no report reached is
    left out (no `reports` field), not shown as 0."""
    return [
        CallRate(n * BUCKET_SECONDS * 1000, round(int(finished or 0) / BUCKET_SECONDS, 3))
        for n, finished, reports in rows
        if reports is not None
    ]


class SignalOps:
    """The golden-signal history, and the counters a sample reads."""

    def __init__(self, redis: aioredis.Redis) -> None:
        self._put_sample = lua.Script(redis, PUT_SAMPLE)
        self._signals_redis = redis

    @guarded
    async def put_signal_sample(self, pool: str, slot: int, sample: Mapping[str, Any]) -> int:
        """Stores `sample` as the pool's sample of `slot` (replacing one
        stored there) and drops the samples older than HISTORY_SECONDS, in
        one script. Returns how many it dropped."""
        dropped = await self._put_sample(
            keys=[keys.signals(pool)],
            args=[slot, encode_sample(sample), oldest_slot(slot), HISTORY_SECONDS],
        )
        return int(dropped)

    @guarded
    async def signal_history(self, pool: str, since_ms: int = 0) -> list[dict[str, Any]]:
        """The pool's stored samples with a ts_ms from since_ms on, oldest first."""
        return history_since(await self._signals_redis.hgetall(keys.signals(pool)), since_ms)

    @guarded
    async def reported_call_rates(
        self, pool: str, now: float | None = None, seconds: int = CALL_RATE_SECONDS
    ) -> list[CallRate]:
        """Calls per second that clients reported, per whole 10 s load
        bucket of the last `seconds`, oldest first (kept by the balancers,
        so known even when no admin process sampled)."""
        numbers = call_rate_buckets(time.time() if now is None else now, seconds)
        async with self._signals_redis.pipeline(transaction=False) as pipe:
            for n in numbers:
                pipe.hmget(keys.load_bucket(pool, n), "finished", "reports")
            rows = await pipe.execute()
        return call_rates((n, f, r) for n, (f, r) in zip(numbers, rows, strict=True))

    @guarded
    async def outcome_counts(self, pool: str) -> dict[str, Outcomes]:
        """The pool's outcome totals per backend (every report's, for
        display). No reader resets them: each takes its own differences."""
        return parse_outcomes(await self._signals_redis.hgetall(keys.outcomes(pool)))
