"""MemoryStore: the registry port in memory, for fast tests of front ends.

It shares every write operation of RegistryStore (lookaside.registry.
backend_ops: the same arguments, outcomes and errors) and replaces only the
scripts, with the Python twins of lookaside.registry.memory_scripts; the
reads here return the same types. tests/lookaside/test_registry_contract.py
runs one suite against both. The clock is injectable, so tests can move
time; setting `available = False` makes every call raise Unavailable, as a
lost Redis would. Keys do not expire here; a stored sample's history is
still cut to HISTORY_SECONDS on each write. Outlier sweeps
(lookaside.registry.outlier) have no twin.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterable, Mapping
from typing import Any

from lookaside.registry import load, signals
from lookaside.registry.load import LoadWindow, ReplicaStreams
from lookaside.registry.memory_scripts import ScriptTwins
from lookaside.registry.model import Backend, PoolConfig, PoolSnapshot
from lookaside.registry.outlier import Outcomes, parse_outcomes
from lookaside.registry.signals import CallRate
from lookaside.registry.tokens import BackendToken, TokenOps, token_digest

__all__ = ["MemoryStore"]


class MemoryStore(ScriptTwins, TokenOps):
    """The registry port in memory (see the module docstring)."""

    async def changes(self) -> AsyncIterator[str | None]:
        self._check()
        q: asyncio.Queue[str] = asyncio.Queue()
        self._subscribers.append(q)
        try:
            yield None
            while True:
                yield await q.get()
        finally:
            self._subscribers.remove(q)

    async def close(self) -> None:
        return None

    async def ping(self) -> None:
        self._check()

    async def now_ms(self) -> int:
        self._check()
        return self.clock()

    async def has_state_marker(self) -> bool:
        self._check()
        return getattr(self, "_state_marker", None) is not None

    async def set_state_marker(self, value: str) -> None:
        self._check()
        self._state_marker = value

    async def list_pools(self) -> list[str]:
        self._check()
        return sorted(self._index_set)

    async def get_pool(self, pool: str) -> PoolConfig | None:
        self._check()
        p = self._pools.get(pool)
        return PoolConfig.from_json(p.config) if p else None

    async def versions(self, pools: Iterable[str]) -> dict[str, int]:
        self._check()
        return {pool: self._versions[pool] for pool in pools}

    async def snapshot(self, pool: str) -> PoolSnapshot | None:
        self._check()
        p = self._pools.get(pool)
        if p is None:
            return None
        backends = sorted(
            (Backend.from_json(json.dumps(b)) for b in p.backends.values()),
            key=lambda b: (b.ip, b.port, b.id),
        )
        return PoolSnapshot(
            name=pool,
            version=self._versions[pool],
            config=PoolConfig.from_json(p.config),
            backends=tuple(backends),
            config_version=self._config_versions[pool],
        )

    async def holds(self, pool: str) -> dict[str, str]:
        self._check()
        return dict(self._holds.get(pool, {}))

    async def prune_index(self) -> list[str]:
        self._check()
        gone = sorted(self._index_set - set(self._pools))
        self._index_set -= set(gone)
        return gone

    async def backend_token(self, pool: str, token: str | bytes) -> BackendToken | None:
        self._check()
        raw = self._tokens.get(pool, {}).get(token_digest(token))
        return BackendToken.from_json(raw) if raw else None

    async def backend_tokens(self, pool: str) -> list[BackendToken]:
        self._check()
        records = (BackendToken.from_json(r) for r in self._tokens.get(pool, {}).values())
        return sorted(records, key=lambda t: (t.created_ms, t.id))

    async def events(self, pool: str, limit: int = 100) -> list[dict[str, Any]]:
        self._check()
        p = self._pools.get(pool)
        return [dict(e) for e in p.events[:limit]] if p else []

    # -- reports, streams, replicas --------------------------------------------

    async def add_reports(
        self,
        pool: str,
        batch_id: str,
        bucket: int,
        fields: Mapping[str, int],
        outcomes: Mapping[str, int] | None = None,
    ) -> bool:
        self._check()
        marker = f"{pool}|{batch_id}"
        if marker in self._batches:
            return False
        self._batches.add(marker)
        p = self._pools.get(pool)
        if p is None:
            return True  # as in Redis, reports of a missing pool go nowhere visible
        counts = {f: n for f, n in fields.items() if n}
        p.buckets.setdefault(bucket, Counter()).update(counts)
        p.total.update(counts)
        p.outcomes.update({f: n for f, n in (outcomes or {}).items() if n})
        return True

    async def set_stream_counts(self, replica: str, counts: Mapping[str, int]) -> None:
        self._check()
        stamp = int(time.time() * 1000)
        for pool, count in counts.items():
            if pool in self._pools:
                self._pools[pool].streams[replica] = json.dumps({"streams": count, "ts_ms": stamp})

    async def clear_stream_counts(self, replica: str, pools: Iterable[str]) -> None:
        self._check()
        for pool in pools:
            if pool in self._pools:
                self._pools[pool].streams.pop(replica, None)

    async def load_windows(self, pool: str, now: float | None = None) -> list[LoadWindow]:
        self._check()
        p = self._pools.get(pool)
        buckets = {n: dict(c) for n, c in p.buckets.items()} if p else {}
        return load.sum_buckets(buckets, time.time() if now is None else now)  # type: ignore[arg-type]

    async def load_total(self, pool: str) -> dict[str, int]:
        self._check()
        p = self._pools.get(pool)
        return dict(p.total) if p else {}

    async def replica_streams(self, pool: str, now_ms: int | None = None) -> list[ReplicaStreams]:
        self._check()
        p = self._pools.get(pool)
        return load.parse_streams(p.streams if p else {}, now_ms)

    async def touch_replica(self, replica: str, stale_ms: int) -> list[str]:
        self._check()
        now = self.clock()
        self._replicas[replica] = now
        return sorted(r for r, seen in self._replicas.items() if now - seen <= stale_ms)

    async def forget_replica(self, replica: str) -> None:
        self._check()
        self._replicas.pop(replica, None)

    # -- golden-signal history ---------------------------------------------------

    async def put_signal_sample(self, pool: str, slot: int, sample: Mapping[str, Any]) -> int:
        self._check()
        stored = self._signals.setdefault(pool, {})
        stored[str(slot)] = signals.encode_sample(sample)
        stale = signals.stale_slots(stored, slot)
        for f in stale:
            del stored[str(f)]
        return len(stale)

    async def signal_history(self, pool: str, since_ms: int = 0) -> list[dict[str, Any]]:
        self._check()
        return signals.history_since(self._signals.get(pool, {}), since_ms)

    async def reported_call_rates(
        self, pool: str, now: float | None = None, seconds: int = signals.CALL_RATE_SECONDS
    ) -> list[CallRate]:
        self._check()
        p = self._pools.get(pool)
        buckets = p.buckets if p else {}
        numbers = signals.call_rate_buckets(time.time() if now is None else now, seconds)
        return signals.call_rates(
            (n, buckets[n].get("finished"), buckets[n].get("reports"))
            for n in numbers
            if n in buckets
        )

    async def outcome_counts(self, pool: str) -> dict[str, Outcomes]:
        self._check()
        p = self._pools.get(pool)
        return parse_outcomes(p.outcomes) if p else {}
