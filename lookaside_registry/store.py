"""RegistryStore: the registry's port (lookaside_registry.port) in Redis.
Every read and write of pools and backends; nothing outside
lookaside_registry talks to Redis.

Results are typed, and every failure is a lookaside_registry.errors error:
a Redis or connection failure is `Unavailable`, never a Redis exception.
"""

from __future__ import annotations

import asyncio
import json
import random
from collections.abc import AsyncIterator, Iterable
from typing import Any

import redis.asyncio as aioredis
import redis.exceptions
from redis.asyncio.cluster import RedisCluster

from lookaside_registry import keys, lua, scripts
from lookaside_registry.backend_ops import BackendOps, Lease, ReapResult, StepResult, _text
from lookaside_registry.errors import (
    Unavailable,
    guarded,
)
from lookaside_registry.model import Backend, PoolConfig, PoolSnapshot
from lookaside_registry.reports import ReportOps
from lookaside_registry.signals import SignalOps
from lookaside_registry.tokens import BackendToken, TokenOps, token_digest

# How long the panic guard holds a removal at most (ms), unless told.
DEFAULT_GUARD_BOUND_MS = 180_000
# Seconds a cluster node gets to answer SUBSCRIBE before the next is tried.
SUBSCRIBE_TIMEOUT = 2.0

__all__ = ["DEFAULT_GUARD_BOUND_MS", "Lease", "ReapResult", "RegistryStore", "StepResult"]


class RegistryStore(BackendOps, TokenOps, ReportOps, SignalOps):
    """Async access to the registry. One instance per process is enough."""

    def __init__(
        self, redis: aioredis.Redis, *, guard_bound_ms: int = DEFAULT_GUARD_BOUND_MS
    ) -> None:
        self.redis = redis
        self.guard_bound_ms = guard_bound_ms
        self._scripts = {
            name: lua.Script(redis, scripts.compose(getattr(scripts, name)))
            for name in (
                "REGISTER", "HEARTBEAT", "STEP", "REAP", "UPDATE_BACKEND",
                "PUT_STATIC", "PUT_CONFIG", "DELETE_POOL", "PUT_HOLD", "MINT_TOKEN",
                "REVOKE_TOKEN",
            )
        }  # fmt: skip
        # A script, not a MULTI: atomic on a single Redis and under Cluster.
        self._read_pool = lua.Script(redis, scripts.compose(scripts.READ_POOL))
        self._reserve_pool = lua.Script(redis, scripts.compose(scripts.RESERVE_POOL, prelude=False))
        ReportOps.__init__(self, redis)
        SignalOps.__init__(self, redis)

    @classmethod
    def from_url(cls, url: str, *, cluster: bool = False, **kwargs: Any) -> RegistryStore:
        """A store on the Redis at `url`, or with `cluster` on the Redis
        Cluster that `url` names a node of."""
        bound = kwargs.pop("guard_bound_ms", DEFAULT_GUARD_BOUND_MS)
        kwargs.setdefault("socket_connect_timeout", 2.0)
        kwargs.setdefault("socket_timeout", 5.0)
        if cluster:
            return cls(RedisCluster.from_url(url, **kwargs), guard_bound_ms=bound)  # type: ignore[arg-type]
        kwargs.setdefault("health_check_interval", 10)
        # A bounded pool that makes a caller wait for a free connection: the
        # plain pool fails a burst of concurrent registrations with "Too many
        # connections" instead.
        kwargs.setdefault("max_connections", 128)
        kwargs.setdefault("timeout", 5.0)
        pool = aioredis.BlockingConnectionPool.from_url(url, **kwargs)
        return cls(aioredis.Redis.from_pool(pool), guard_bound_ms=bound)

    async def close(self) -> None:
        try:
            # redis-py's aclose can wait forever on a connection that a
            # cancelled command left behind.
            await asyncio.wait_for(self.redis.aclose(), 2.0)
        except TimeoutError:
            pass

    async def _run(
        self, name: str, pool: str, args: list[Any], extra_keys: Iterable[str] = ()
    ) -> Any:
        return await self._scripts[name](
            keys=scripts.pool_keys(pool) + list(extra_keys), args=[pool, *args]
        )

    async def changes(self) -> AsyncIterator[str | None]:
        """The names of pools as they change (Redis pub/sub): first None once
        subscribed, then a pool name per change. Ends with Unavailable when
        the connection is lost; messages lost meanwhile are not replayed."""
        own: aioredis.Redis | None = None
        if isinstance(self.redis, RedisCluster):
            pubsub, own = await self._cluster_node_subscribed(self.redis)
        else:
            pubsub = self.redis.pubsub(ignore_subscribe_messages=True)
        try:
            if not pubsub.subscribed:
                await pubsub.subscribe(keys.CHANGES)
            yield None
            async for message in pubsub.listen():
                if message.get("type") == "message":
                    yield _text(message["data"])
        except (redis.exceptions.RedisError, OSError) as exc:
            raise Unavailable(f"Redis pub/sub failed ({type(exc).__name__}: {exc})") from exc
        finally:
            await _close_quietly(pubsub, own)

    @staticmethod
    async def _cluster_node_subscribed(cluster: RedisCluster) -> tuple[Any, aioredis.Redis]:
        """A pub/sub subscribed to the change channel, and the client of its
        own it runs on, on one node of the cluster that answers.

        PUBLISH under Cluster reaches every node (primaries and replicas),
        so any one will do. The nodes are tried in random order, so
        replicas spread out, and a node that does not answer (a primary
        just killed, before the topology shows its replica promoted) is
        passed over; when none answers, the topology is read again before
        the next attempt. The connection is not one of the cluster
        client's: that client drops all of its connections when the
        cluster reports itself down during a failover."""
        problem = "no node is known"
        try:
            await cluster.initialize()
        except (redis.exceptions.RedisError, OSError) as exc:
            # During a failover the topology may still name a dead master;
            # the nodes known from before can carry pub/sub all the same.
            problem = f"topology: {type(exc).__name__}: {exc}"
        nodes = list(cluster.get_nodes())
        random.shuffle(nodes)
        for node in nodes:
            pool = aioredis.ConnectionPool(
                connection_class=node.connection_class, max_connections=2, **node.connection_kwargs
            )
            client = aioredis.Redis.from_pool(pool)
            pubsub = client.pubsub(ignore_subscribe_messages=True)
            try:
                await asyncio.wait_for(pubsub.subscribe(keys.CHANGES), SUBSCRIBE_TIMEOUT)
                return pubsub, client
            except (redis.exceptions.RedisError, OSError, TimeoutError) as exc:
                problem = f"{node.name}: {type(exc).__name__}: {exc}"
                await _close_quietly(pubsub, client)
        try:
            await cluster.nodes_manager.initialize()
        except (redis.exceptions.RedisError, OSError):
            pass
        raise Unavailable(f"Redis Cluster pub/sub: no node answered ({problem})")

    @guarded
    async def ping(self) -> None:
        await self.redis.ping()

    @guarded
    async def now_ms(self) -> int:
        """The Redis server's clock, the one lease deadlines are kept in."""
        seconds, micros = await self.redis.time()
        return int(seconds) * 1000 + int(micros) // 1000

    @guarded
    async def has_state_marker(self) -> bool:
        """Whether the declared-state marker is there (it goes when Redis
        loses its data)."""
        return bool(await self.redis.exists(keys.STATE_MARKER))

    @guarded
    async def set_state_marker(self, value: str) -> None:
        await self.redis.set(keys.STATE_MARKER, value)

    # -- pools ---------------------------------------------------------------

    @guarded
    async def list_pools(self) -> list[str]:
        return sorted(_text(m) for m in await self.redis.smembers(keys.POOLS))

    @guarded
    async def get_pool(self, pool: str) -> PoolConfig | None:
        raw = await self.redis.get(keys.config(pool))
        return PoolConfig.from_json(raw) if raw else None

    async def _index(self, pool: str) -> None:
        await self.redis.sadd(keys.POOLS, pool)

    async def _reserve(self, pool: str, max_pools: int) -> Any:
        return await self._reserve_pool(keys=[keys.POOLS], args=[pool, max_pools])

    async def _unindex(self, pool: str) -> None:
        # Every write that creates a pool adds it to the index after its
        # script, and this removal checks again after it: a pool created
        # meanwhile is put back. So a pool that exists is always indexed.
        await self.redis.srem(keys.POOLS, pool)
        if await self.redis.exists(keys.config(pool)):
            await self.redis.sadd(keys.POOLS, pool)

    @guarded
    async def prune_index(self) -> list[str]:
        """Drops index entries of pools that do not exist (a registration
        that lost a race with the pool's deletion leaves one)."""
        pools = await self.list_pools()
        gone = []
        for pool in pools:
            if not await self.redis.exists(keys.config(pool)):
                await self._unindex(pool)
                gone.append(pool)
        return gone

    @guarded
    async def versions(self, pools: Iterable[str]) -> dict[str, int]:
        pools = list(pools)
        if not pools:
            return {}
        async with self.redis.pipeline(transaction=False) as pipe:
            for pool in pools:
                pipe.get(keys.version(pool))
            values = await pipe.execute()
        return {p: int(v or 0) for p, v in zip(pools, values, strict=True)}

    @guarded
    async def snapshot(self, pool: str) -> PoolSnapshot | None:
        """A consistent view of one pool, or None when it does not exist."""
        version, raw_config, flat, config_version = await self._read_pool(
            keys=scripts.pool_keys(pool), args=[pool]
        )
        if not raw_config:
            return None
        backends = sorted(
            (Backend.from_json(v) for v in flat[1::2]),
            key=lambda b: (b.ip, b.port, b.id),
        )
        return PoolSnapshot(
            name=pool,
            version=int(version or 0),
            config=PoolConfig.from_json(raw_config),
            backends=tuple(backends),
            config_version=int(config_version or 0),
        )

    @guarded
    async def holds(self, pool: str) -> dict[str, str]:
        """Operators' holds (backend id -> drained|disabled); they outlive
        the backend's registration."""
        raw = await self.redis.hgetall(keys.pool_key(pool, "holds"))
        return {_text(k): _text(v) for k, v in raw.items()}

    @guarded
    async def backend_token(self, pool: str, token: str | bytes) -> BackendToken | None:
        """The record of a per-backend token of `pool`, or None."""
        raw = await self.redis.hget(keys.backend_tokens(pool), token_digest(token))
        return BackendToken.from_json(raw) if raw else None

    @guarded
    async def backend_tokens(self, pool: str) -> list[BackendToken]:
        """The pool's per-backend tokens (records only), oldest first."""
        raw = await self.redis.hvals(keys.backend_tokens(pool))
        return sorted((BackendToken.from_json(r) for r in raw), key=lambda t: (t.created_ms, t.id))

    @guarded
    async def events(self, pool: str, limit: int = 100) -> list[dict[str, Any]]:
        raw = await self.redis.lrange(keys.events(pool), 0, limit - 1)
        return [json.loads(r) for r in raw]


async def _close_quietly(pubsub: Any, client: aioredis.Redis | None) -> None:
    try:
        await pubsub.aclose()
        if client is not None:
            await client.aclose()
    except Exception:  # noqa: BLE001 - best effort on a broken connection
        pass
