"""The registry's writes: pool settings and deletion, registration and
leases, state machine events, static backends and lease expiry. Each is one
script (lookaside_registry.scripts) whose outcome comes back typed."""

from __future__ import annotations

import json
import math
import secrets
from dataclasses import dataclass, replace
from typing import Any

from lookaside_registry import keys, machine
from lookaside_registry.errors import (
    Conflict,
    InvalidInput,
    LeaseRefused,
    NotFound,
    NotOwner,
    PoolFull,
    RefusedByHold,
    TooManyPools,
    TransitionRefused,
    VersionConflict,
    guarded,
)
from lookaside_registry.machine import TABLE, Event, Key, Outcome
from lookaside_registry.model import Backend, PoolConfig, backend_id_for
from lookaside_registry.validation import check_pool_name, check_subset_size


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


# No load figure means anything past this (11 days of latency, a billion
# calls a second); a larger one would only skew least_loaded's weights.
LOAD_MAX = 1e9


def check_load(load: dict[str, float] | None) -> dict[str, float] | None:
    """Load figures must be finite, at most LOAD_MAX and not negative,
    except utilization, where a negative value means unknown (BackendLoad
    in registry.proto) and is stored as -1."""
    if not load:
        return load
    checked = dict(load)
    for name, value in load.items():
        if not isinstance(value, int | float) or not math.isfinite(value):
            raise InvalidInput(f"load.{name} is {value!r}: give a finite number")
        if value > LOAD_MAX:
            raise InvalidInput(f"load.{name} is {value!r}: give a finite number up to {LOAD_MAX:g}")
        if value < 0:
            if name != "utilization":
                raise InvalidInput(
                    f"load.{name} is {value!r}: give a finite number >= 0 (or leave it out)"
                )
            checked[name] = -1.0
    return checked


class BackendOps:
    """The write operations, over the registry's scripts: mixed into
    RegistryStore (Lua in Redis) and MemoryStore (the same Lua scripts in
    an embedded interpreter), which provide _run, _index, _unindex and guard_bound_ms. Both
    therefore take the same arguments and raise the same errors."""

    guard_bound_ms: int

    async def _run(self, name: str, pool: str, args: list[Any], extra_keys: Any = ()) -> Any:
        """Runs the named script of lookaside_registry.scripts for `pool`."""
        raise NotImplementedError

    async def _index(self, pool: str) -> None:
        """Adds the pool to the pools index (after the write that made it)."""
        raise NotImplementedError

    async def _unindex(self, pool: str) -> None:
        """Removes the pool from the index unless it exists again."""
        raise NotImplementedError

    async def _reserve(self, pool: str, max_pools: int) -> Any:
        """Runs RESERVE_POOL (lookaside_registry.scripts) on the pools index."""
        raise NotImplementedError

    @guarded
    async def reserve_pool(self, pool: str, max_pools: int) -> None:
        """Enters a pool about to be created into the pools index, if it is
        there already or the index holds fewer than `max_pools` names, in one
        atomic step; TooManyPools otherwise. Give the name back with
        `release_pool` when the creation does not happen."""
        status, count = await self._reserve(check_pool_name(pool), max_pools)
        if Outcome(_text(status)) is Outcome.CONFLICT:
            raise TooManyPools(
                f"there are {count} pools, the most allowed ({max_pools})", int(count)
            )

    @guarded
    async def release_pool(self, pool: str) -> None:
        """Drops a reserved name from the pools index unless the pool exists."""
        await self._unindex(pool)

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
        check_subset_size(config.subset_size)
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
        await self._index(pool)
        return int(cv)

    @guarded
    async def delete_pool(self, pool: str, *, actor: str = "api", force: bool = True) -> int:
        """Removes a pool and everything under it in one script, and returns
        how many live backends it had. Without `force`, Conflict while any
        backend is live (static, or its lease not expired)."""
        extra = [
            keys.streams(pool),
            keys.load_total(pool),
            keys.outcomes(pool),
            keys.outcomes_judged(pool),
            keys.accusers(pool),
            keys.signals(pool),
            keys.backend_tokens(pool),
        ]
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
        max_backends: int = 0,
        owner: str = "",
    ) -> Lease:
        """Registers a backend with a lease. The pool is created with
        defaults when `create_pool`; otherwise a missing pool is NotFound.
        A static backend at the address is RefusedByHold. With
        `max_backends`, a new backend (not a re-registration) into a pool
        that holds that many already is PoolFull, decided in the same
        script as the write. `owner` is the registrant's principal: while
        the backend's lease is live, a registration of the address by
        another principal is NotOwner. Inputs must already be validated."""
        backend = Backend(
            id=backend_id_for(ip, port), pool=pool, host=host, ip=ip, port=port, weight=weight,
            zone=zone, metadata=dict(metadata or {}), lease_id=secrets.token_hex(8), owner=owner,
        )  # fmt: skip
        status, version, ttl, _now = await self._run(
            "REGISTER",
            pool,
            [actor, backend.id, backend.to_json(), lease_ttl_ms, PoolConfig(name=pool).to_json(),
             "1" if create_pool else "0", max_backends],
        )  # fmt: skip
        outcome = Outcome(_text(status))
        if outcome is Outcome.FULL:
            raise PoolFull(
                f"pool {pool!r} has {version} backends, the most this registration may add to",
                int(version),
            )
        if outcome is Outcome.POOL_NOT_FOUND:
            raise NotFound(f"pool {pool!r} does not exist and this registration may not create it")
        if outcome is Outcome.STATIC_REFUSED:
            raise RefusedByHold(
                f"{ip}:{port} is a static backend of pool {pool!r}; an operator manages it",
                "static",
            )
        if outcome is Outcome.OWNER_REFUSED:
            raise NotOwner(
                f"{ip}:{port} in pool {pool!r} holds a live lease taken by another registrant; "
                "only that registrant may replace it (or an operator remove it)"
            )
        await self._index(pool)
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
        if outcome is Outcome.OWNER_REFUSED:
            raise NotOwner(
                f"backend {backend_id} in pool {pool!r} was registered by another registrant; "
                "only that registrant may renew, drain or deregister it (or an operator)"
            )

    @guarded
    async def heartbeat(
        self,
        pool: str,
        backend_id: str,
        lease_id: str,
        load: dict[str, float] | None = None,
        *,
        owner: str = "",
    ) -> int:
        """Renews a lease and returns its TTL in ms. LeaseRefused when the
        lease id is not the current one, NotFound when the backend is gone,
        NotOwner when `owner` is not the registrant that took it."""
        load = check_load(load)
        status, ttl = await self._run(
            "HEARTBEAT",
            pool,
            ["registration", backend_id, lease_id, json.dumps(load) if load else "", owner],
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
        owner: str = "",
    ) -> StepResult:
        """Applies one state machine event to one backend. Raises NotFound,
        LeaseRefused, NotOwner (a self event by another registrant than
        `owner`) or RefusedByHold; returns REFUSED, HELD, UNCHANGED or
        CHANGED results."""
        status, version, previous = await self._run(
            "STEP",
            pool,
            [actor, backend_id, event.value, lease_id, detail[:200], int(max_share * 1000),
             self.guard_bound_ms, owner],
        )  # fmt: skip
        outcome = Outcome(_text(status))
        self._lease_errors(outcome, pool, backend_id)
        return StepResult(outcome, int(version), _text(previous))

    async def deregister(
        self,
        pool: str,
        backend_id: str,
        lease_id: str,
        *,
        actor: str = "registration",
        owner: str = "",
    ) -> None:
        """The backend leaves (its lease id is required); an operator's hold stays."""
        await self.step(
            pool, backend_id, Event.DEREGISTER, actor=actor, lease_id=lease_id, owner=owner
        )

    async def drain(
        self,
        pool: str,
        backend_id: str,
        lease_id: str,
        *,
        actor: str = "registration",
        owner: str = "",
    ) -> bool:
        """Takes a backend out of the lists, keeping its lease (graceful
        shutdown). Returns False when it was already out (draining or held)."""
        result = await self.step(
            pool, backend_id, Event.DRAIN, actor=actor, lease_id=lease_id, owner=owner
        )
        return result.changed

    async def operate(self, pool: str, backend_id: str, event: Event, *, actor: str) -> StepResult:
        """An operator's event; TransitionRefused when the state does not allow it."""
        result = await self.step(pool, backend_id, event, actor=actor)
        if result.outcome is Outcome.NOT_FOUND:
            raise _missing(pool, backend_id)
        if result.outcome is Outcome.REFUSED:
            self._refuse(pool, backend_id, event, result)
        return result

    def _refuse(self, pool: str, backend_id: str, event: Event, result: StepResult) -> None:
        rule = TABLE[event]
        hint = f"; {rule.hint}" if rule.hint else ""
        current = machine.shown(machine.Key(result.previous))
        raise TransitionRefused(
            f"backend {backend_id} in pool {pool!r} is {current}: cannot move it to "
            f"{machine.shown(machine.target(event))}{hint}",
            current,
        )

    @guarded
    async def put_hold(
        self, pool: str, backend_id: str, hold: Key, *, actor: str = "api"
    ) -> StepResult:
        """Sets an operator's hold (DRAINED or DISABLED) on a backend, registered
        or not: one that registers later takes it (declarative state restores
        holds this way). TransitionRefused when the backend's state does not
        allow it (a drain of an unhealthy backend)."""
        if hold not in machine.HOLDS:
            raise InvalidInput(f"hold {hold!r} is not one of: drained, disabled")
        status, version, previous = await self._run(
            "PUT_HOLD", pool, [actor, backend_id, hold.value]
        )
        outcome = Outcome(_text(status))
        if outcome is Outcome.POOL_NOT_FOUND:
            raise NotFound(f"pool {pool!r} does not exist")
        event = Event.OPERATOR_DRAIN if hold is machine.Key.DRAINED else Event.OPERATOR_DISABLE
        result = StepResult(outcome, int(version), _text(previous))
        if outcome is Outcome.REFUSED:
            self._refuse(pool, backend_id, event, result)
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
        await self._index(pool)
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
    async def reap_expired(
        self, pool: str, max_share: float = 0.5, *, ended_before_ms: int = 0
    ) -> ReapResult:
        """Removes backends whose lease has passed, unless more than
        max_share of the pool expired at once: the panic guard then keeps
        them, for at most guard_bound_ms, and never one failing health checks.
        With `ended_before_ms` (Redis TIME), only leases whose deadline is
        earlier than that are removed."""
        removed, held = await self._run(
            "REAP",
            pool,
            ["lease", int(max_share * 1000), self.guard_bound_ms, int(ended_before_ms)],
        )
        return ReapResult([_text(i) for i in removed], [_text(i) for i in held])
