"""MemoryStore: the registry port in memory, for fast tests of front ends.

It runs the registry's own Lua scripts (lookaside_registry.scripts, and
those of reports.py and signals.py) over an in-memory keyspace
(lookaside_registry.lua_keyspace), with the same keys and arguments as
RegistryStore: every rule is the script's, written once. The writes are
those of RegistryStore's mixins (backend_ops, tokens, reports, signals);
the reads here read the same keys and return the same types.
tests/lookaside/test_registry_contract.py runs one suite against both.

The clock is injectable (the scripts' TIME reads it), so tests can move
time; setting `available = False` makes every call raise Unavailable, as a
lost Redis would. Keys do not expire here; a stored sample's history is
still cut to HISTORY_SECONDS on each write. Outlier sweeps
(lookaside_registry.outlier) are not offered.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from typing import Any

from lookaside_registry import keys, load, lua, reports, scripts, signals, xds
from lookaside_registry.backend_ops import BackendOps
from lookaside_registry.errors import Unavailable
from lookaside_registry.load import LoadWindow, ReplicaStreams
from lookaside_registry.lua_keyspace import LuaKeyspace
from lookaside_registry.model import Backend, PoolConfig, PoolSnapshot
from lookaside_registry.outlier import Outcomes, count_accusers, parse_outcomes
from lookaside_registry.reports import ReportOps
from lookaside_registry.signals import CallRate, SignalOps
from lookaside_registry.tokens import BackendToken, TokenOps, token_digest
from lookaside_registry.xds import ReplicaXdsStreams

__all__ = ["MemoryStore"]

DEFAULT_GUARD_BOUND_MS = 180_000
_POOL_SCRIPTS = {
    name: scripts.compose(getattr(scripts, name))
    for name in (
        "REGISTER", "HEARTBEAT", "STEP", "REAP", "UPDATE_BACKEND", "PUT_STATIC",
        "PUT_CONFIG", "DELETE_POOL", "PUT_HOLD", "MINT_TOKEN", "REVOKE_TOKEN",
    )
}  # fmt: skip
_READ_POOL = scripts.compose(scripts.READ_POOL)
_RESERVE_POOL = scripts.compose(scripts.RESERVE_POOL, prelude=False)


class _Script(lua.Script):
    """A script of ReportOps or SignalOps, run over the store's keyspace."""

    __slots__ = ("store",)

    def __init__(self, store: MemoryStore, source: str) -> None:
        super().__init__(None, source)
        self.store = store

    async def __call__(self, keys: Sequence[Any] = (), args: Sequence[Any] = ()) -> Any:
        return self.store._eval(self.source, keys, args)


class MemoryStore(BackendOps, TokenOps, ReportOps, SignalOps):
    """The registry port in memory (see the module docstring)."""

    def __init__(
        self,
        *,
        guard_bound_ms: int = DEFAULT_GUARD_BOUND_MS,
        clock: Callable[[], int] | None = None,
    ) -> None:
        self.guard_bound_ms = guard_bound_ms
        self.clock = clock or (lambda: int(time.time() * 1000))
        self.available = True
        self._subscribers: list[asyncio.Queue[str]] = []
        self.keyspace = LuaKeyspace(lambda: self.clock(), self._publish)
        # The scripts ReportOps and SignalOps run; their reads are below.
        self._add_reports = _Script(self, reports.ADD_REPORTS)
        self._touch = _Script(self, reports.TOUCH_REPLICA)
        self._put_sample = _Script(self, signals.PUT_SAMPLE)

    def _check(self) -> None:
        if not self.available:
            raise Unavailable("Redis failed (the in-memory registry is set unavailable)")

    def _eval(self, source: str, keys_: Sequence[Any], args: Sequence[Any]) -> Any:
        self._check()
        return self.keyspace.eval(source, keys_, args)

    def _call(self, *args: Any) -> Any:
        self._check()
        return self.keyspace.call(*args)

    def _publish(self, channel: str, message: str) -> int:
        if channel != keys.CHANGES:
            return 0
        for q in self._subscribers:
            q.put_nowait(message)
        return len(self._subscribers)

    # -- what BackendOps runs --------------------------------------------------

    async def _run(self, name: str, pool: str, args: list[Any], extra_keys: Any = ()) -> Any:
        keys_ = scripts.pool_keys(pool) + list(extra_keys)
        return self._eval(_POOL_SCRIPTS[name], keys_, [pool, *args])

    async def _index(self, pool: str) -> None:
        self._call("SADD", keys.POOLS, pool)

    async def _reserve(self, pool: str, max_pools: int) -> Any:
        return self._eval(_RESERVE_POOL, [keys.POOLS], [pool, max_pools])

    async def _unindex(self, pool: str) -> None:
        if not self._call("EXISTS", keys.config(pool)):
            self._call("SREM", keys.POOLS, pool)

    # -- reads ---------------------------------------------------------------

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
        return bool(self._call("EXISTS", keys.STATE_MARKER))

    async def set_state_marker(self, value: str) -> None:
        self._call("SET", keys.STATE_MARKER, value)

    async def list_pools(self) -> list[str]:
        self._check()
        return sorted(self.keyspace.members(keys.POOLS))

    async def get_pool(self, pool: str) -> PoolConfig | None:
        self._check()
        raw = self.keyspace.string(keys.config(pool))
        return PoolConfig.from_json(raw) if raw else None

    async def versions(self, pools: Iterable[str]) -> dict[str, int]:
        self._check()
        return {pool: int(self.keyspace.string(keys.version(pool)) or 0) for pool in pools}

    async def snapshot(self, pool: str) -> PoolSnapshot | None:
        version, raw_config, flat, config_version = self._eval(
            _READ_POOL, scripts.pool_keys(pool), [pool]
        )
        if not raw_config:
            return None
        backends = sorted(
            (Backend.from_json(v) for v in flat[1::2]), key=lambda b: (b.ip, b.port, b.id)
        )
        return PoolSnapshot(
            name=pool,
            version=int(version or 0),
            config=PoolConfig.from_json(raw_config),
            backends=tuple(backends),
            config_version=int(config_version or 0),
        )

    async def holds(self, pool: str) -> dict[str, str]:
        self._check()
        return self.keyspace.hash(keys.holds(pool))

    async def prune_index(self) -> list[str]:
        gone = sorted(
            p for p in await self.list_pools() if not self._call("EXISTS", keys.config(p))
        )
        for pool in gone:
            await self._unindex(pool)
        return gone

    async def backend_token(self, pool: str, token: str | bytes) -> BackendToken | None:
        self._check()
        raw = self.keyspace.hash(keys.backend_tokens(pool)).get(token_digest(token))
        return BackendToken.from_json(raw) if raw else None

    async def backend_tokens(self, pool: str) -> list[BackendToken]:
        self._check()
        raw = self.keyspace.hash(keys.backend_tokens(pool)).values()
        return sorted((BackendToken.from_json(r) for r in raw), key=lambda t: (t.created_ms, t.id))

    async def events(self, pool: str, limit: int = 100) -> list[dict[str, Any]]:
        self._check()
        return [json.loads(e) for e in self.keyspace.items(keys.events(pool))[:limit]]

    # -- reports, streams, replicas (the writes are ReportOps') -----------------

    async def accusers_since(self, pool: str, since_ms: int) -> dict[str, int]:
        self._check()
        scores = self.keyspace.scores(keys.accusers(pool))
        return count_accusers(m for m, at in scores.items() if at > since_ms)

    async def set_stream_counts(self, replica: str, counts: Mapping[str, int]) -> None:
        stamp = int(time.time() * 1000)
        for pool, count in counts.items():
            entry = json.dumps({"streams": count, "ts_ms": stamp})
            self._call("HSET", keys.streams(pool), replica, entry)

    async def clear_stream_counts(self, replica: str, pools: Iterable[str]) -> None:
        for pool in pools:
            self._call("HDEL", keys.streams(pool), replica)

    async def flush_reports(
        self,
        batch_id: str,
        bucket: int,
        pools: Mapping[str, reports.PoolReport],
        replica: str = "",
        stream_counts: Mapping[str, int] | None = None,
    ) -> None:
        """As RegistryStore's (there, one pipeline): no round trips here."""
        for pool, (fields, outcomes, accusers) in pools.items():
            await self.add_reports(pool, batch_id, bucket, fields, outcomes, accusers)
        if stream_counts:
            await self.set_stream_counts(replica, stream_counts)

    async def load_windows(self, pool: str, now: float | None = None) -> list[LoadWindow]:
        self._check()
        prefix = keys.load_bucket(pool, 0)[:-1]
        buckets = {
            int(k[len(prefix) :]): self.keyspace.hash(k)
            for k in list(self.keyspace.data)
            if k.startswith(prefix) and k[len(prefix) :].lstrip("-").isdigit()
        }
        return load.sum_buckets(buckets, time.time() if now is None else now)

    async def load_total(self, pool: str) -> dict[str, int]:
        self._check()
        return {f: int(n) for f, n in self.keyspace.hash(keys.load_total(pool)).items()}

    async def replica_streams(self, pool: str, now_ms: int | None = None) -> list[ReplicaStreams]:
        self._check()
        raw = self.keyspace.hash(keys.streams(pool))
        for gone in load.forgotten_streams(raw):
            self._call("HDEL", keys.streams(pool), gone)
        return load.parse_streams(raw, now_ms)

    async def set_xds_streams(
        self, replica: str, streams: list[dict[str, Any]], total: int
    ) -> None:
        now_ms = int(time.time() * 1000)
        for gone in xds.forgotten(self.keyspace.hash(keys.XDS_STREAMS), now_ms):
            if gone != replica:
                self._call("HDEL", keys.XDS_STREAMS, gone)
        self._call("HSET", keys.XDS_STREAMS, replica, xds.entry(total, streams, now_ms))

    async def clear_xds_streams(self, replica: str) -> None:
        self._call("HDEL", keys.XDS_STREAMS, replica)

    async def pools_streams(
        self, pools: list[str], now_ms: int | None = None
    ) -> dict[str, list[ReplicaStreams]]:
        return {pool: await self.replica_streams(pool, now_ms) for pool in pools}

    async def xds_streams(self, now_ms: int | None = None) -> list[ReplicaXdsStreams]:
        self._check()
        return xds.parse_entries(self.keyspace.hash(keys.XDS_STREAMS), now_ms)

    async def forget_replica(self, replica: str) -> None:
        self._call("HDEL", keys.REPLICAS, replica)

    # -- golden-signal history (the write is SignalOps') -------------------------

    async def signal_history(self, pool: str, since_ms: int = 0) -> list[dict[str, Any]]:
        self._check()
        return signals.history_since(self.keyspace.hash(keys.signals(pool)), since_ms)

    async def reported_call_rates(
        self, pool: str, now: float | None = None, seconds: int = signals.CALL_RATE_SECONDS
    ) -> list[CallRate]:
        self._check()
        numbers = signals.call_rate_buckets(time.time() if now is None else now, seconds)
        rows = [self.keyspace.hash(keys.load_bucket(pool, n)) for n in numbers]
        return signals.call_rates(
            (n, row.get("finished"), row.get("reports"))
            for n, row in zip(numbers, rows, strict=True)
        )

    async def outcome_counts(self, pool: str) -> dict[str, Outcomes]:
        self._check()
        return parse_outcomes(self.keyspace.hash(keys.outcomes(pool)))
