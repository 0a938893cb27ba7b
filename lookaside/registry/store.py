"""RegistryStore: the registry's port. Every read and write of pools and
backends, in Redis; nothing outside lookaside.registry talks to Redis.

Results are typed, and every failure is a lookaside.registry.errors error:
a Redis or connection failure is `Unavailable`, never a Redis exception.
"""

from __future__ import annotations

import asyncio
import json
import math
import secrets
from collections.abc import Iterable
from dataclasses import dataclass, replace
from typing import Any

import redis.asyncio as aioredis

from lookaside.registry import keys, machine, scripts
from lookaside.registry.errors import (
    Conflict,
    InvalidInput,
    LeaseRefused,
    NotFound,
    RefusedByHold,
    TransitionRefused,
    VersionConflict,
    guarded,
)
from lookaside.registry.machine import TABLE, Event, Outcome
from lookaside.registry.model import Backend, PoolConfig, PoolSnapshot, backend_id_for
from lookaside.registry.reports import ReportOps
from lookaside.registry.validation import check_pool_name

# How long the panic guard holds a removal at most (ms), unless told.
DEFAULT_GUARD_BOUND_MS = 180_000


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


@dataclass(frozen=True, slots=True)
class StepResult:
    """What one state machine event did to one backend."""

    outcome: Outcome
    version: int
    previous: str

    @property
    def changed(self) -> bool:
        return self.outcome is Outcome.CHANGED


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _missing(pool: str, backend_id: str) -> NotFound:
    return NotFound(f"backend {backend_id} is not registered in pool {pool!r}")


def check_load(load: dict[str, float] | None) -> dict[str, float] | None:
    """Load figures must be finite and not negative."""
    for name, value in (load or {}).items():
        if not isinstance(value, int | float) or not math.isfinite(value) or value < 0:
            raise InvalidInput(
                f"load.{name} is {value!r}: give a finite number >= 0 (or leave it out)"
            )
    return load


class RegistryStore(ReportOps):
    """Async access to the registry. One instance per process is enough."""

    def __init__(
        self, redis: aioredis.Redis, *, guard_bound_ms: int = DEFAULT_GUARD_BOUND_MS
    ) -> None:
        self.redis = redis
        self.guard_bound_ms = guard_bound_ms
        self._scripts = {
            name: redis.register_script(scripts.compose(getattr(scripts, name)))
            for name in (
                "REGISTER", "HEARTBEAT", "STEP", "REAP", "UPDATE_BACKEND",
                "PUT_STATIC", "PUT_CONFIG", "DELETE_POOL",
            )
        }  # fmt: skip
        ReportOps.__init__(self, redis)

    @classmethod
    def from_url(cls, url: str, **kwargs: Any) -> RegistryStore:
        bound = kwargs.pop("guard_bound_ms", DEFAULT_GUARD_BOUND_MS)
        kwargs.setdefault("socket_connect_timeout", 2.0)
        kwargs.setdefault("socket_timeout", 5.0)
        kwargs.setdefault("health_check_interval", 10)
        return cls(aioredis.Redis.from_url(url, **kwargs), guard_bound_ms=bound)

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

    @guarded
    async def ping(self) -> None:
        await self.redis.ping()

    @guarded
    async def now_ms(self) -> int:
        """The Redis server's clock, the one lease deadlines are kept in."""
        seconds, micros = await self.redis.time()
        return int(seconds) * 1000 + int(micros) // 1000

    # -- pools ---------------------------------------------------------------

    @guarded
    async def list_pools(self) -> list[str]:
        return sorted(_text(m) for m in await self.redis.smembers(keys.POOLS))

    @guarded
    async def put_pool(
        self,
        config: PoolConfig,
        *,
        actor: str = "api",
        only_if_absent: bool = False,
        only_if_exists: bool = False,
        expected_version: int | None = None,
    ) -> int:
        """Creates or replaces a pool's settings and returns their new config
        version. With `expected_version`, a compare-and-set: VersionConflict
        when the settings changed since that version."""
        pool = check_pool_name(config.name)
        mode = "absent" if only_if_absent else "exists" if only_if_exists else "any"
        expected = "" if expected_version is None else str(expected_version)
        status, cv, _v = await self._run(
            "PUT_CONFIG", pool, [actor, config.to_json(), mode, expected]
        )
        outcome = Outcome(_text(status))
        if outcome is Outcome.NOT_FOUND:
            raise NotFound(f"pool {pool!r} does not exist; create it with POST /api/v1/pools")
        if outcome is Outcome.CONFLICT and expected_version is not None:
            raise VersionConflict(
                f"pool {pool!r} settings changed concurrently: they are at version {cv}, "
                f"not {expected_version}; read them again and retry",
                int(cv),
            )
        if outcome is Outcome.CONFLICT:
            raise Conflict(
                f"pool {pool!r} already exists; change it with PUT or PATCH /api/v1/pools/{pool}"
            )
        await self.redis.sadd(keys.POOLS, pool)
        return int(cv)

    @guarded
    async def get_pool(self, pool: str) -> PoolConfig | None:
        raw = await self.redis.get(keys.config(pool))
        return PoolConfig.from_json(raw) if raw else None

    @guarded
    async def delete_pool(self, pool: str, *, actor: str = "api", force: bool = True) -> int:
        """Removes a pool and everything under it in one script, and returns
        how many live backends it had. Without `force`, Conflict while any
        backend is live (static, or its lease not expired)."""
        extra = [keys.streams(pool), keys.load_total(pool), keys.outcomes(pool)]
        status, live = await self._run("DELETE_POOL", pool, [actor, "1" if force else "0"], extra)
        outcome = Outcome(_text(status))
        if outcome is Outcome.NOT_FOUND:
            raise NotFound(f"pool {pool!r} does not exist")
        if outcome is Outcome.CONFLICT:
            raise Conflict(
                f"pool {pool!r} still has {live} live backend(s); drain and remove them, "
                "or delete with ?force=true"
            )
        await self._unindex(pool)
        return int(live)

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
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.get(keys.version(pool))
            pipe.get(keys.config(pool))
            pipe.hgetall(keys.backends(pool))
            pipe.get(keys.pool_key(pool, "config_version"))
            version, raw_config, raw_backends, config_version = await pipe.execute()
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
            config_version=int(config_version or 0),
        )

    @guarded
    async def holds(self, pool: str) -> dict[str, str]:
        """Operators' holds (backend id -> drained|disabled); they outlive
        the backend's registration."""
        raw = await self.redis.hgetall(keys.pool_key(pool, "holds"))
        return {_text(k): _text(v) for k, v in raw.items()}

    # -- backends ------------------------------------------------------------

    @guarded
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
        """Registers a backend with a lease. The pool is created with
        defaults when `create_pool`; otherwise a missing pool is NotFound.
        A static backend at the address is RefusedByHold. Inputs must
        already be validated."""
        backend = Backend(
            id=backend_id_for(ip, port), pool=pool, host=host, ip=ip, port=port, weight=weight,
            zone=zone, metadata=dict(metadata or {}), lease_id=secrets.token_hex(8),
        )  # fmt: skip
        status, version, ttl, _now = await self._run(
            "REGISTER",
            pool,
            [actor, backend.id, backend.to_json(), lease_ttl_ms, PoolConfig(name=pool).to_json(),
             "1" if create_pool else "0"],
        )  # fmt: skip
        outcome = Outcome(_text(status))
        if outcome is Outcome.POOL_NOT_FOUND:
            raise NotFound(f"pool {pool!r} does not exist and this registration may not create it")
        if outcome is Outcome.STATIC_REFUSED:
            raise RefusedByHold(
                f"{ip}:{port} is a static backend of pool {pool!r}; an operator manages it",
                "static",
            )
        await self.redis.sadd(keys.POOLS, pool)
        return Lease(backend.id, backend.lease_id, int(ttl), int(version))

    def _lease_errors(self, outcome: Outcome, pool: str, backend_id: str) -> None:
        if outcome is Outcome.NOT_FOUND:
            raise _missing(pool, backend_id)
        if outcome is Outcome.LEASE_REFUSED:
            raise LeaseRefused(
                f"lease for backend {backend_id} in pool {pool!r} is not the current one "
                "(missing, or replaced by a newer registration)"
            )
        if outcome is Outcome.STATIC_REFUSED:
            raise RefusedByHold(
                f"backend {backend_id} in pool {pool!r} is static; it has no lease", "static"
            )

    @guarded
    async def heartbeat(
        self, pool: str, backend_id: str, lease_id: str, load: dict[str, float] | None = None
    ) -> int:
        """Renews a lease and returns its TTL in ms. LeaseRefused when the
        lease id is not the current one, NotFound when the backend is gone."""
        check_load(load)
        status, ttl = await self._run(
            "HEARTBEAT",
            pool,
            ["registration", backend_id, lease_id, json.dumps(load) if load else ""],
        )
        self._lease_errors(Outcome(_text(status)), pool, backend_id)
        return int(ttl)

    @guarded
    async def step(
        self,
        pool: str,
        backend_id: str,
        event: Event,
        *,
        actor: str,
        lease_id: str = "",
        detail: str = "",
        max_share: float = 0.5,
    ) -> StepResult:
        """Applies one state machine event to one backend. Raises NotFound,
        LeaseRefused or RefusedByHold; returns REFUSED, HELD, UNCHANGED or
        CHANGED results."""
        status, version, previous = await self._run(
            "STEP",
            pool,
            [actor, backend_id, event.value, lease_id, detail[:200], int(max_share * 1000),
             self.guard_bound_ms],
        )  # fmt: skip
        outcome = Outcome(_text(status))
        self._lease_errors(outcome, pool, backend_id)
        return StepResult(outcome, int(version), _text(previous))

    async def deregister(
        self, pool: str, backend_id: str, lease_id: str, *, actor: str = "registration"
    ) -> None:
        """The backend leaves (its lease id is required); an operator's hold stays."""
        await self.step(pool, backend_id, Event.DEREGISTER, actor=actor, lease_id=lease_id)

    async def drain(
        self, pool: str, backend_id: str, lease_id: str, *, actor: str = "registration"
    ) -> bool:
        """Takes a backend out of the lists, keeping its lease (graceful
        shutdown). Returns False when it was already out (draining or held)."""
        result = await self.step(pool, backend_id, Event.DRAIN, actor=actor, lease_id=lease_id)
        return result.changed

    async def operate(self, pool: str, backend_id: str, event: Event, *, actor: str) -> StepResult:
        """An operator's event; TransitionRefused when the state does not allow it."""
        result = await self.step(pool, backend_id, event, actor=actor)
        if result.outcome is Outcome.NOT_FOUND:
            raise _missing(pool, backend_id)
        if result.outcome is Outcome.REFUSED:
            rule = TABLE[event]
            hint = f"; {rule.hint}" if rule.hint else ""
            current = machine.shown(machine.Key(result.previous))
            raise TransitionRefused(
                f"backend {backend_id} in pool {pool!r} is {current}: cannot move it to "
                f"{machine.shown(machine.target(event))}{hint}",
                current,
            )
        return result

    async def remove_backend(self, pool: str, backend_id: str, *, actor: str = "api") -> None:
        """An operator removes a backend (static or not) and its hold."""
        await self.operate(pool, backend_id, Event.OPERATOR_REMOVE, actor=actor)

    @guarded
    async def put_static(self, backend: Backend, *, actor: str = "api") -> int:
        """Adds a backend that has no lease (it never expires). Conflict when
        the address is already registered, checked in the same script."""
        backend = replace(backend, static=True, lease_id="", lease_expires_ms=0)
        pool = backend.pool
        status, version = await self._run(
            "PUT_STATIC", pool, [actor, backend.id, backend.to_json()]
        )
        outcome = Outcome(_text(status))
        if outcome is Outcome.POOL_NOT_FOUND:
            raise NotFound(f"pool {pool!r} does not exist; create it with POST /api/v1/pools")
        if outcome is Outcome.CONFLICT:
            raise Conflict(
                f"backend {backend.id} ({backend.ip}:{backend.port}) is already registered in "
                f"pool {pool!r}; change its weight or remove it first"
            )
        await self.redis.sadd(keys.POOLS, pool)
        return int(version)

    @guarded
    async def update_backend(
        self,
        pool: str,
        backend_id: str,
        *,
        actor: str = "api",
        kind: str = "updated",
        **fields: Any,
    ) -> int:
        """Changes fields of one backend that are not its state (weight, ...)
        and returns the new pool version. States change only through step()."""
        forbidden = {"state", "hold", "static", "lease_id", "id", "pool"} & set(fields)
        if forbidden:
            raise InvalidInput(f"{', '.join(sorted(forbidden))} cannot be changed this way")
        status, version = await self._run(
            "UPDATE_BACKEND", pool, [actor, backend_id, json.dumps(fields), kind]
        )
        if Outcome(_text(status)) is Outcome.NOT_FOUND:
            raise _missing(pool, backend_id)
        return int(version)

    @guarded
    async def reap_expired(self, pool: str, max_share: float = 0.5) -> ReapResult:
        """Removes backends whose lease has passed, unless more than
        max_share of the pool expired at once: the panic guard then keeps
        them, for at most guard_bound_ms, and never one failing health checks."""
        removed, held = await self._run(
            "REAP", pool, ["lease", int(max_share * 1000), self.guard_bound_ms]
        )
        return ReapResult([_text(i) for i in removed], [_text(i) for i in held])

    @guarded
    async def events(self, pool: str, limit: int = 100) -> list[dict[str, Any]]:
        raw = await self.redis.lrange(keys.events(pool), 0, limit - 1)
        return [json.loads(r) for r in raw]
