"""RegistryStore: every read and write of pools and backends in Redis."""

from __future__ import annotations

import asyncio
import json
import secrets
from collections.abc import Iterable
from dataclasses import dataclass, replace
from typing import Any

import redis.asyncio as aioredis

from lookaside.registry import keys, scripts
from lookaside.registry.model import Backend, BackendState, PoolConfig, PoolSnapshot, backend_id_for
from lookaside.registry.validation import NotFoundError, check_pool_name


@dataclass(frozen=True, slots=True)
class Lease:
    backend_id: str
    lease_id: str
    ttl_ms: int
    version: int


@dataclass(frozen=True, slots=True)
class ReapResult:
    removed: list[str]
    held: list[str]


def _check_lease(status: int, pool: str, backend_id: str) -> None:
    """Raises for the lease scripts' refusals: 0 no such backend, -1 its
    lease was replaced by a newer registration."""
    if status == 0:
        raise NotFoundError(f"backend {backend_id} is not registered in pool {pool!r}")
    if status == -1:
        raise NotFoundError(
            f"lease for backend {backend_id} in pool {pool!r} was replaced by a newer registration"
        )


class RegistryStore:
    """Async access to the registry. One instance per process is enough."""

    def __init__(self, redis: aioredis.Redis) -> None:
        self.redis = redis
        self._register = redis.register_script(scripts.compose(scripts.REGISTER))
        self._heartbeat = redis.register_script(scripts.compose(scripts.HEARTBEAT))
        self._deregister = redis.register_script(scripts.compose(scripts.DEREGISTER))
        self._drain = redis.register_script(scripts.compose(scripts.DRAIN))
        self._reap = redis.register_script(scripts.compose(scripts.REAP))
        self._update = redis.register_script(scripts.compose(scripts.UPDATE_BACKEND))
        self._put_static = redis.register_script(scripts.compose(scripts.PUT_STATIC))
        self._put_config = redis.register_script(scripts.compose(scripts.PUT_CONFIG))

    @classmethod
    def from_url(cls, url: str, **kwargs: Any) -> RegistryStore:
        kwargs.setdefault("socket_connect_timeout", 2.0)
        kwargs.setdefault("socket_timeout", 5.0)
        kwargs.setdefault("health_check_interval", 10)
        return cls(aioredis.Redis.from_url(url, **kwargs))

    async def close(self) -> None:
        try:
            # redis-py's aclose can wait forever on a connection that a
            # cancelled command left behind.
            await asyncio.wait_for(self.redis.aclose(), 2.0)
        except TimeoutError:
            pass

    # -- pools ---------------------------------------------------------------

    async def list_pools(self) -> list[str]:
        members = await self.redis.smembers(keys.POOLS)
        return sorted(m.decode() if isinstance(m, bytes) else m for m in members)

    async def put_pool(
        self, config: PoolConfig, *, actor: str = "api", only_if_absent: bool = False
    ) -> bool:
        """Creates or replaces a pool's settings. Returns False when
        only_if_absent is set and the pool already exists."""
        check_pool_name(config.name)
        await self.redis.sadd(keys.POOLS, config.name)
        pool = config.name
        result = await self._put_config(
            keys=[keys.config(pool), keys.version(pool), keys.events(pool)],
            args=[config.to_json(), pool, actor, "1" if only_if_absent else "0"],
        )
        return bool(result)

    async def get_pool(self, pool: str) -> PoolConfig | None:
        raw = await self.redis.get(keys.config(pool))
        return PoolConfig.from_json(raw) if raw else None

    async def delete_pool(self, pool: str) -> None:
        """Removes a pool and everything under it."""
        await self.redis.delete(
            keys.config(pool),
            keys.backends(pool),
            keys.leases(pool),
            keys.events(pool),
            keys.streams(pool),
            keys.load_total(pool),
        )
        # The version key is kept and bumped so watchers notice the removal.
        await self.redis.incr(keys.version(pool))
        await self.redis.srem(keys.POOLS, pool)
        await self.redis.publish(keys.CHANGES, pool)

    async def versions(self, pools: Iterable[str]) -> dict[str, int]:
        pools = list(pools)
        if not pools:
            return {}
        async with self.redis.pipeline(transaction=False) as pipe:
            for pool in pools:
                pipe.get(keys.version(pool))
            values = await pipe.execute()
        return {p: int(v or 0) for p, v in zip(pools, values, strict=True)}

    async def snapshot(self, pool: str) -> PoolSnapshot | None:
        """A consistent view of one pool, or None when it does not exist."""
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.get(keys.version(pool))
            pipe.get(keys.config(pool))
            pipe.hgetall(keys.backends(pool))
            version, raw_config, raw_backends = await pipe.execute()
        if raw_config is None:
            return None
        backends = sorted(
            (Backend.from_json(v) for v in raw_backends.values()),
            key=lambda b: (b.ip, b.port, b.id),
        )
        return PoolSnapshot(
            name=pool,
            version=int(version or 0),
            config=PoolConfig.from_json(raw_config),
            backends=tuple(backends),
        )

    # -- backends ------------------------------------------------------------

    async def register(
        self,
        *,
        pool: str,
        host: str,
        ip: str,
        port: int,
        weight: int = 1,
        zone: str = "",
        metadata: dict[str, str] | None = None,
        lease_ttl_ms: int = 0,
        actor: str = "registration",
        create_pool: bool = True,
    ) -> Lease:
        """Registers a backend with a lease (created with the pool if need be,
        unless create_pool is False: then a missing pool is NotFoundError).
        Inputs must already be validated."""
        if not create_pool and not await self.redis.exists(keys.config(pool)):
            raise NotFoundError(f"pool {pool!r} does not exist")
        backend = Backend(
            id=backend_id_for(ip, port),
            pool=pool,
            host=host,
            ip=ip,
            port=port,
            weight=weight,
            zone=zone,
            metadata=dict(metadata or {}),
            lease_id=secrets.token_hex(8),
        )
        await self.redis.sadd(keys.POOLS, pool)
        version, _now, ttl = await self._register(
            keys=[
                keys.config(pool),
                keys.backends(pool),
                keys.leases(pool),
                keys.version(pool),
                keys.events(pool),
            ],
            args=[
                backend.id,
                backend.to_json(),
                lease_ttl_ms,
                PoolConfig(name=pool).to_json(),
                pool,
                actor,
            ],
        )
        return Lease(backend.id, backend.lease_id, int(ttl), int(version))

    async def heartbeat(
        self, pool: str, backend_id: str, lease_id: str, load: dict[str, float] | None = None
    ) -> int:
        """Renews a lease and returns its TTL in ms. Raises NotFoundError when
        the lease expired or was replaced by a newer registration."""
        status, ttl = await self._heartbeat(
            keys=[keys.backends(pool), keys.leases(pool), keys.config(pool), keys.version(pool)],
            args=[backend_id, lease_id, json.dumps(load) if load else "", pool],
        )
        _check_lease(status, pool, backend_id)
        return int(ttl)

    async def deregister(
        self, pool: str, backend_id: str, lease_id: str = "", *, actor: str = "registration"
    ) -> None:
        status = await self._deregister(
            keys=[keys.backends(pool), keys.leases(pool), keys.version(pool), keys.events(pool)],
            args=[backend_id, lease_id, pool, actor],
        )
        _check_lease(status, pool, backend_id)

    async def drain(
        self, pool: str, backend_id: str, lease_id: str, *, actor: str = "registration"
    ) -> bool:
        """Takes a backend out of the lists, keeping its lease (graceful
        shutdown). Returns False when it was already draining or disabled."""
        status = await self._drain(
            keys=[keys.backends(pool), keys.version(pool), keys.events(pool)],
            args=[backend_id, lease_id, pool, actor],
        )
        _check_lease(status, pool, backend_id)
        return status == 1

    async def put_static(self, backend: Backend, *, actor: str = "api") -> int:
        """Adds or replaces a backend that has no lease (it never expires)."""
        backend = replace(backend, static=True, lease_id="", lease_expires_ms=0)
        await self.redis.sadd(keys.POOLS, backend.pool)
        pool = backend.pool
        return int(
            await self._put_static(
                keys=[keys.backends(pool), keys.version(pool), keys.events(pool)],
                args=[backend.id, backend.to_json(), pool, actor],
            )
        )

    async def update_backend(
        self,
        pool: str,
        backend_id: str,
        *,
        actor: str = "api",
        kind: str = "updated",
        **fields: Any,
    ) -> int:
        """Changes fields of one backend (state, weight, ...) and returns the
        new pool version."""
        patch = {k: (v.value if isinstance(v, BackendState) else v) for k, v in fields.items()}
        version = await self._update(
            keys=[keys.backends(pool), keys.version(pool), keys.events(pool)],
            args=[backend_id, json.dumps(patch), pool, actor, kind],
        )
        if not version:
            raise NotFoundError(f"backend {backend_id} is not registered in pool {pool!r}")
        return int(version)

    async def reap_expired(self, pool: str, max_share: float = 0.5) -> ReapResult:
        """Removes backends whose lease has passed, unless more than
        max_share of the pool expired at once (the panic guard keeps them)."""
        raw = await self._reap(
            keys=[
                keys.backends(pool),
                keys.leases(pool),
                keys.version(pool),
                keys.events(pool),
                keys.panic(pool),
            ],
            args=[pool, int(max_share * 1000)],
        )
        status, ids = int(raw[0]), [i.decode() if isinstance(i, bytes) else i for i in raw[1:]]
        if status == -1:
            return ReapResult(removed=[], held=ids)
        return ReapResult(removed=ids, held=[])

    async def events(self, pool: str, limit: int = 100) -> list[dict[str, Any]]:
        raw = await self.redis.lrange(keys.events(pool), 0, limit - 1)
        return [json.loads(r) for r in raw]
