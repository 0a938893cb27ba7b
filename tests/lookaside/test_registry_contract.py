"""The registry port's contract, run against the in-memory twin, a real
redis-server and a real three-master Redis Cluster: the same operations
give the same outcomes and errors everywhere."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import pytest
import pytest_asyncio

from lookaside_registry import errors
from lookaside_registry.machine import Event, Key, Outcome
from lookaside_registry.memory import MemoryStore
from lookaside_registry.model import Backend, BackendState, PoolConfig, backend_id_for
from lookaside_registry.outlier import Outcomes, outcome_fields
from lookaside_registry.signals import HISTORY_SECONDS, SLOT_SECONDS, CallRate, slot_of
from lookaside_registry.store import RegistryStore
from lookaside_registry.tokens import token_id

pytestmark = pytest.mark.asyncio(loop_scope="session")

BOUND_MS = 400


class ManualClock:
    def __init__(self) -> None:
        self.now = int(time.time() * 1000)

    def __call__(self) -> int:
        return self.now


@dataclass
class Port:
    store: Any  # RegistryStore or MemoryStore
    clock: ManualClock | None

    async def pass_ms(self, ms: int) -> None:
        """Lets `ms` of registry time pass: moves the twin's clock, or waits
        (bounded) until the Redis server's clock has moved that far."""
        if self.clock is not None:
            self.clock.now += ms
            return
        start = await self.store.now_ms()
        deadline = time.monotonic() + ms / 1000 + 5
        while await self.store.now_ms() < start + ms:
            assert time.monotonic() < deadline, "the Redis clock did not move"
            await asyncio.sleep(0.02)


@pytest_asyncio.fixture(loop_scope="session", params=["memory", "redis", "cluster"])
async def port(request: pytest.FixtureRequest) -> AsyncIterator[Port]:
    if request.param == "memory":
        clock = ManualClock()
        yield Port(MemoryStore(guard_bound_ms=BOUND_MS, clock=clock), clock)
        return
    if request.param == "redis":
        store = RegistryStore.from_url(
            request.getfixturevalue("redis_url"), guard_bound_ms=BOUND_MS
        )
    else:
        url = request.getfixturevalue("redis_cluster_url")
        store = RegistryStore.from_url(url, cluster=True, guard_bound_ms=BOUND_MS)
    yield Port(store, None)
    await store.close()


@pytest.fixture
def pool() -> str:
    return f"c-{uuid.uuid4().hex[:10]}"


async def _register(port: Port, pool: str, ip: str, **kw: Any) -> Any:
    return await port.store.register(pool=pool, host="h", ip=ip, port=80, **kw)


async def _states(port: Port, pool: str) -> dict[str, BackendState]:
    snap = await port.store.snapshot(pool)
    return {b.id: b.state for b in snap.backends} if snap else {}


async def test_register_creates_the_pool_and_versions_only_grow(port: Port, pool: str) -> None:
    lease = await _register(port, pool, "10.0.0.1")
    snap = await port.store.snapshot(pool)
    assert snap is not None and [b.id for b in snap.serving] == [lease.backend_id]
    assert pool in await port.store.list_pools()
    v1 = snap.version
    await port.store.operate(pool, lease.backend_id, Event.OPERATOR_DRAIN, actor="op")
    await port.store.put_pool(PoolConfig(name=pool, report_interval_ms=5000))
    snap = await port.store.snapshot(pool)
    assert snap is not None and snap.version > v1 and snap.config.report_interval_ms == 5000
    events = await port.store.events(pool)
    versions = [e["version"] for e in events if e["kind"] != "panic"]
    assert versions == sorted(versions, reverse=True) and len(set(versions)) == len(versions)


async def test_register_without_create_pool_refuses_a_missing_pool(port: Port, pool: str) -> None:
    with pytest.raises(errors.NotFound, match="may not create it"):
        await _register(port, pool, "10.0.0.2", create_pool=False)
    assert await port.store.get_pool(pool) is None
    assert pool not in await port.store.list_pools()
    await port.store.put_pool(PoolConfig(name=pool))
    await _register(port, pool, "10.0.0.2", create_pool=False)


async def test_heartbeat_drain_deregister_need_the_current_lease(port: Port, pool: str) -> None:
    lease = await _register(port, pool, "10.0.0.3")
    bid = lease.backend_id
    for lease_id in ("", "0123456789abcdef"):
        with pytest.raises(errors.LeaseRefused):
            await port.store.heartbeat(pool, bid, lease_id)
        with pytest.raises(errors.LeaseRefused):
            await port.store.drain(pool, bid, lease_id)
        with pytest.raises(errors.LeaseRefused):
            await port.store.deregister(pool, bid, lease_id)
    newer = await _register(port, pool, "10.0.0.3")
    with pytest.raises(errors.LeaseRefused):
        await port.store.heartbeat(pool, bid, lease.lease_id)
    assert await port.store.heartbeat(pool, bid, newer.lease_id) > 0
    assert await port.store.drain(pool, bid, newer.lease_id) is True
    assert await port.store.drain(pool, bid, newer.lease_id) is False
    await port.store.deregister(pool, bid, newer.lease_id)
    with pytest.raises(errors.NotFound):
        await port.store.heartbeat(pool, bid, newer.lease_id)


async def test_a_live_lease_belongs_to_the_registrant_that_took_it(port: Port, pool: str) -> None:
    mine = await _register(port, pool, "10.0.0.9", owner="pool-token:p#aaaa", lease_ttl_ms=1_000)
    bid = mine.backend_id
    # Another principal, even with the lease id in hand, changes nothing.
    with pytest.raises(errors.NotOwner):
        await _register(port, pool, "10.0.0.9", owner="pool-token:p#bbbb", weight=1000)
    with pytest.raises(errors.NotOwner):
        await port.store.heartbeat(pool, bid, mine.lease_id, owner="pool-token:p#bbbb")
    with pytest.raises(errors.NotOwner):
        await port.store.drain(pool, bid, mine.lease_id, owner="mtls:other")
    with pytest.raises(errors.NotOwner):
        await port.store.deregister(pool, bid, mine.lease_id, owner="mtls:other")
    snap = await port.store.snapshot(pool)
    (b,) = snap.backends
    assert (b.lease_id, b.owner, b.weight, b.state) == (
        mine.lease_id, "pool-token:p#aaaa", 1, BackendState.SERVING
    )  # fmt: skip
    # The owner renews and re-registers; an operator is not bound.
    assert await port.store.heartbeat(pool, bid, mine.lease_id, owner="pool-token:p#aaaa") > 0
    again = await _register(port, pool, "10.0.0.9", owner="pool-token:p#aaaa", lease_ttl_ms=1_000)
    await port.store.operate(pool, bid, Event.OPERATOR_DISABLE, actor="api")
    await port.store.remove_backend(pool, bid, actor="api")
    assert await _states(port, pool) == {}
    # Once a lease has ended, the address is anyone's to take.
    await _register(port, pool, "10.0.0.9", owner="pool-token:p#aaaa", lease_ttl_ms=1_000)
    await port.pass_ms(1_100)
    taken = await _register(port, pool, "10.0.0.9", owner="mtls:other")
    assert taken.lease_id not in (mine.lease_id, again.lease_id)
    (b,) = (await port.store.snapshot(pool)).backends
    assert b.owner == "mtls:other"


async def test_backend_tokens_are_kept_by_digest_and_go_with_their_pool(
    port: Port, pool: str
) -> None:
    with pytest.raises(errors.NotFound):
        await port.store.mint_backend_token(pool, "10.0.0.1:80")
    await port.store.put_pool(PoolConfig(name=pool))
    token, record = await port.store.mint_backend_token(pool, "10.0.0.1:80", actor="admin:t")
    other, _ = await port.store.mint_backend_token(pool, "[fd00::1]:80")
    assert len(token) >= 40 and token != other and record.id == token_id(token)
    assert await port.store.backend_token(pool, token) == record
    assert await port.store.backend_token(pool, token + "x") is None
    assert await port.store.backend_token(f"{pool}-other", token) is None
    listed = await port.store.backend_tokens(pool)
    assert {t.address for t in listed} == {"10.0.0.1:80", "[fd00::1]:80"}
    assert all(token not in str(t) for t in listed)
    events = await port.store.events(pool)
    assert {e["kind"] for e in events} >= {"backend_token_minted"}
    assert all(token not in str(e) for e in events)
    await port.store.revoke_backend_token(pool, record.id)
    assert await port.store.backend_token(pool, token) is None
    with pytest.raises(errors.NotFound):
        await port.store.revoke_backend_token(pool, record.id)
    await port.store.delete_pool(pool)
    await port.store.put_pool(PoolConfig(name=pool))
    assert await port.store.backend_tokens(pool) == []


async def test_self_registration_never_touches_a_static_backend(port: Port, pool: str) -> None:
    await port.store.put_pool(PoolConfig(name=pool))
    bid = backend_id_for("10.0.0.4", 80)
    static = Backend(id=bid, pool=pool, host="h", ip="10.0.0.4", port=80, weight=7)
    await port.store.put_static(static)
    with pytest.raises(errors.RefusedByHold, match="static"):
        await _register(port, pool, "10.0.0.4")
    with pytest.raises(errors.RefusedByHold):
        await port.store.deregister(pool, bid, "x")
    with pytest.raises(errors.Conflict, match="already registered"):
        await port.store.put_static(static)
    snap = await port.store.snapshot(pool)
    assert snap is not None and [(b.static, b.weight) for b in snap.backends] == [(True, 7)]


@pytest.mark.parametrize(
    ("event", "state"),
    [
        (Event.OPERATOR_DISABLE, BackendState.DISABLED),
        (Event.OPERATOR_DRAIN, BackendState.DRAINING),
    ],
)
async def test_operator_holds_outrank_self_registration(
    port: Port, pool: str, event: Event, state: BackendState
) -> None:
    lease = await _register(port, pool, "10.0.0.5")
    await port.store.operate(pool, lease.backend_id, event, actor="op")
    assert await port.store.holds(pool) == {
        lease.backend_id: "disabled" if state is BackendState.DISABLED else "drained"
    }
    again = await _register(port, pool, "10.0.0.5")
    assert await port.store.drain(pool, again.backend_id, again.lease_id) is False
    await port.store.deregister(pool, again.backend_id, again.lease_id)
    await _register(port, pool, "10.0.0.5")
    assert await _states(port, pool) == {lease.backend_id: state}
    await port.store.remove_backend(pool, lease.backend_id, actor="op")
    assert await port.store.holds(pool) == {}
    await _register(port, pool, "10.0.0.5")
    assert await _states(port, pool) == {lease.backend_id: BackendState.SERVING}


async def test_a_hold_set_for_an_absent_backend_applies_when_it_registers(
    port: Port, pool: str
) -> None:
    await port.store.put_pool(PoolConfig(name=pool))
    bid = backend_id_for("10.0.0.8", 80)
    result = await port.store.put_hold(pool, bid, Key.DISABLED, actor="restore")
    assert result.outcome is Outcome.CHANGED
    again = await port.store.put_hold(pool, bid, Key.DISABLED, actor="restore")
    assert again.outcome is Outcome.UNCHANGED
    assert await port.store.holds(pool) == {bid: "disabled"}
    await _register(port, pool, "10.0.0.8")
    assert await _states(port, pool) == {bid: BackendState.DISABLED}
    await port.store.operate(pool, bid, Event.OPERATOR_ENABLE, actor="op")
    assert await port.store.holds(pool) == {}
    await port.store.put_hold(pool, bid, Key.DRAINED, actor="restore")  # now through the machine
    assert await port.store.holds(pool) == {bid: "drained"}
    await port.store.step(pool, bid, Event.OPERATOR_UNDRAIN, actor="op")
    sick = await _register(port, pool, "10.0.0.9")
    await port.store.step(pool, sick.backend_id, Event.HEALTH_FAIL, actor="health", max_share=1.0)
    with pytest.raises(errors.TransitionRefused, match="is unhealthy"):
        await port.store.put_hold(pool, sick.backend_id, Key.DRAINED)
    with pytest.raises(errors.InvalidInput):
        await port.store.put_hold(pool, bid, Key.SERVING)
    with pytest.raises(errors.NotFound):
        await port.store.put_hold(f"{pool}-gone", bid, Key.DISABLED)
    # An operator's remove of a backend that is gone clears its hold.
    absent = backend_id_for("10.0.0.10", 80)
    await port.store.put_hold(pool, absent, Key.DISABLED)
    await port.store.remove_backend(pool, absent)
    assert absent not in await port.store.holds(pool)
    with pytest.raises(errors.NotFound):
        await port.store.remove_backend(pool, absent)


async def test_operator_events_outside_the_table_are_refused(port: Port, pool: str) -> None:
    lease = await _register(port, pool, "10.0.0.6")
    bid = lease.backend_id
    await port.store.operate(pool, bid, Event.OPERATOR_DISABLE, actor="op")
    with pytest.raises(errors.TransitionRefused, match="is disabled: cannot move it to serving"):
        await port.store.operate(pool, bid, Event.OPERATOR_REINSTATE, actor="op")
    result = await port.store.operate(pool, bid, Event.OPERATOR_ENABLE, actor="op")
    assert result.outcome is Outcome.CHANGED and result.previous == "disabled"
    again = await port.store.operate(pool, bid, Event.OPERATOR_ENABLE, actor="op")
    assert again.outcome is Outcome.UNCHANGED
    with pytest.raises(errors.NotFound):
        await port.store.operate(pool, "nope", Event.OPERATOR_DRAIN, actor="op")


async def test_pool_updates_are_compare_and_sets(port: Port, pool: str) -> None:
    v1 = await port.store.put_pool(PoolConfig(name=pool), only_if_absent=True)
    with pytest.raises(errors.Conflict, match="already exists"):
        await port.store.put_pool(PoolConfig(name=pool), only_if_absent=True)
    v2 = await port.store.put_pool(PoolConfig(name=pool, fallback=True), expected_version=v1)
    assert v2 == v1 + 1
    with pytest.raises(errors.VersionConflict) as err:
        await port.store.put_pool(PoolConfig(name=pool, fallback=False), expected_version=v1)
    assert err.value.current_version == v2
    config = await port.store.get_pool(pool)
    assert config is not None and config.fallback is True
    with pytest.raises(errors.NotFound):
        await port.store.put_pool(PoolConfig(name=f"{pool}-x"), only_if_exists=True)


async def test_a_pools_subset_size_is_kept_and_checked(port: Port, pool: str) -> None:
    await port.store.put_pool(PoolConfig(name=pool, subset_size=20))
    config = await port.store.get_pool(pool)
    assert config is not None and config.subset_size == 20
    snap = await port.store.snapshot(pool)
    assert snap is not None and snap.config.subset_size == 20
    for bad in (-1, 1001):
        with pytest.raises(errors.InvalidInput, match=r"subset size .* out of range 0\.\.1000"):
            await port.store.put_pool(PoolConfig(name=pool, subset_size=bad))
    config = await port.store.get_pool(pool)
    assert config is not None and config.subset_size == 20
    await port.store.put_pool(PoolConfig(name=pool))
    config = await port.store.get_pool(pool)
    assert config is not None and config.subset_size == 0


async def test_a_full_pool_refuses_new_backends_in_the_write_itself(port: Port, pool: str) -> None:
    # 12 registrations of distinct addresses at once into a pool that may
    # hold 5: the check and the write are one step, so exactly 5 get in.
    results = await asyncio.gather(
        *(_register(port, pool, f"10.0.9.{i}", max_backends=5) for i in range(12)),
        return_exceptions=True,
    )
    refused = [r for r in results if isinstance(r, errors.PoolFull)]
    assert len(refused) == 7 and all(r.backends == 5 for r in refused), results
    snap = await port.store.snapshot(pool)
    assert snap is not None and len(snap.backends) == 5
    # A backend already in the pool may register again (a restart).
    again = next(r for r in results if not isinstance(r, BaseException))
    ip = next(b.ip for b in snap.backends if b.id == again.backend_id)
    assert (await _register(port, pool, ip, max_backends=5)).backend_id == again.backend_id
    with pytest.raises(errors.PoolFull, match="has 5 backends"):
        await _register(port, pool, "10.0.9.200", max_backends=5)
    assert len((await port.store.snapshot(pool)).backends) == 5  # type: ignore[union-attr]


async def test_pools_reserved_at_once_stop_at_the_limit(port: Port, pool: str) -> None:
    # 12 new names at once where 5 more pools may exist: counting and adding
    # are one step, so exactly 5 are reserved.
    limit = len(await port.store.list_pools()) + 5
    names = [f"{pool}-r{i}" for i in range(12)]
    results = await asyncio.gather(
        *(port.store.reserve_pool(n, limit) for n in names), return_exceptions=True
    )
    refused = [r for r in results if isinstance(r, errors.TooManyPools)]
    assert len(refused) == 7 and all(r.pools == limit for r in refused), results
    reserved = [n for n, r in zip(names, results, strict=True) if r is None]
    assert len(reserved) == 5 and set(reserved) <= set(await port.store.list_pools())
    # A name already in the index passes whatever the count.
    await port.store.reserve_pool(reserved[0], 0)
    # A reservation given back leaves no name behind; one whose pool was
    # created meanwhile stays.
    await port.store.put_pool(PoolConfig(name=reserved[1]))
    for name in reserved:
        await port.store.release_pool(name)
    left = set(await port.store.list_pools())
    assert reserved[1] in left and not (set(reserved) - {reserved[1]}) & left
    await port.store.delete_pool(reserved[1])


# Redis and Cluster only: the twin has no script cache to lose.
@pytest.mark.parametrize("port", ["redis", "cluster"], indirect=True)
async def test_writes_at_once_after_redis_lost_its_scripts_all_land(port: Port, pool: str) -> None:
    await _register(port, pool, "10.0.8.1")
    # A restarted or flushed Redis has no scripts: the next calls, all at
    # once, meet NOSCRIPT together (on a Cluster, SCRIPT FLUSH reaches
    # every primary).
    await port.store.redis.script_flush()
    results = await asyncio.gather(
        *(_register(port, pool, f"10.0.8.{i}") for i in range(2, 14)), return_exceptions=True
    )
    assert [r for r in results if isinstance(r, BaseException)] == []
    assert len((await port.store.snapshot(pool)).backends) == 13  # type: ignore[union-attr]


async def test_pool_deletion_refuses_live_backends_unless_forced(port: Port, pool: str) -> None:
    await _register(port, pool, "10.0.0.7", lease_ttl_ms=60_000)
    slot = slot_of(time.time())
    await port.store.put_signal_sample(pool, slot, {"ts_ms": slot * SLOT_SECONDS * 1000})
    before = (await port.store.versions([pool]))[pool]
    with pytest.raises(errors.Conflict, match="1 live backend"):
        await port.store.delete_pool(pool, force=False)
    assert await port.store.delete_pool(pool, force=True) == 1
    assert await port.store.snapshot(pool) is None
    assert await port.store.signal_history(pool) == []  # the dashboard's history goes too
    assert pool not in await port.store.list_pools()
    assert (await port.store.versions([pool]))[pool] > before
    with pytest.raises(errors.NotFound):
        await port.store.delete_pool(pool)


async def test_one_expiry_is_removed_at_once(port: Port, pool: str) -> None:
    keep = await _register(port, pool, "10.0.1.1", lease_ttl_ms=60_000)
    await _register(port, pool, "10.0.1.2", lease_ttl_ms=50)
    await port.pass_ms(100)
    result = await port.store.reap_expired(pool)
    assert len(result.removed) == 1 and result.held == []
    assert list(await _states(port, pool)) == [keep.backend_id]


async def test_reap_ended_before_removes_only_leases_that_ended_earlier(
    port: Port, pool: str
) -> None:
    keep = await _register(port, pool, "10.0.9.1", lease_ttl_ms=60_000)
    early = await _register(port, pool, "10.0.9.2", lease_ttl_ms=50)
    await port.pass_ms(100)
    cut = await port.store.now_ms()
    late = await _register(port, pool, "10.0.9.3", lease_ttl_ms=50)
    await port.pass_ms(100)
    result = await port.store.reap_expired(pool, 0.5, ended_before_ms=cut)
    assert result.removed == [early.backend_id] and result.held == []
    assert sorted(await _states(port, pool)) == sorted([keep.backend_id, late.backend_id])
    assert (await port.store.reap_expired(pool, 0.5)).removed == [late.backend_id]


async def test_panic_guard_holds_mass_expiry_for_its_bound_only(port: Port, pool: str) -> None:
    await _register(port, pool, "10.0.2.1", lease_ttl_ms=60_000)
    for i in range(2, 5):
        await _register(port, pool, f"10.0.2.{i}", lease_ttl_ms=50)
    await port.pass_ms(100)
    first = await port.store.reap_expired(pool, 0.5)
    assert first.removed == [] and len(first.held) == 3
    events = await port.store.events(pool)
    assert events[0]["kind"] == "panic" and f"at most {BOUND_MS} ms" in events[0]["detail"]
    await port.pass_ms(BOUND_MS + 50)
    later = await port.store.reap_expired(pool, 0.5)
    assert sorted(later.removed) == sorted(first.held) and later.held == []


async def test_a_backend_failing_health_checks_is_never_held(port: Port, pool: str) -> None:
    leases = [await _register(port, pool, f"10.0.3.{i}", lease_ttl_ms=50) for i in range(1, 4)]
    await _register(port, pool, "10.0.3.9", lease_ttl_ms=60_000)
    # Health checking fails all three; the guard lets one go (1 of 4) and
    # holds the others, which it remembers as failing.
    outcomes = [
        (await port.store.step(pool, lease.backend_id, Event.HEALTH_FAIL, actor="health",
                               detail="Check UNAVAILABLE", max_share=0.5)).outcome
        for lease in leases
    ]  # fmt: skip
    assert outcomes == [Outcome.CHANGED, Outcome.CHANGED, Outcome.HELD]
    await port.pass_ms(100)
    result = await port.store.reap_expired(pool, 0.5)
    assert sorted(result.removed) == sorted(lease.backend_id for lease in leases)
    assert result.held == []


async def test_a_heartbeat_renews_a_held_backend(port: Port, pool: str) -> None:
    await _register(port, pool, "10.0.4.1", lease_ttl_ms=60_000)
    leases = [await _register(port, pool, f"10.0.4.{i}", lease_ttl_ms=50) for i in range(2, 5)]
    await port.pass_ms(100)
    assert len((await port.store.reap_expired(pool, 0.5)).held) == 3
    for lease in leases:
        assert await port.store.heartbeat(pool, lease.backend_id, lease.lease_id) == 50
    snap = await port.store.snapshot(pool)
    assert snap is not None and all(b.guard_since_ms == 0 for b in snap.backends)


async def _fail_three_of_four(port: Port, pool: str, net: str) -> list[Any]:
    """Four backends; health checking fails three: two go, the third is held."""
    leases = [await _register(port, pool, f"{net}.{i}", lease_ttl_ms=60_000) for i in range(1, 5)]
    outcomes = [
        (await port.store.step(pool, lease.backend_id, Event.HEALTH_FAIL, actor="health",
                               detail="Check UNAVAILABLE", max_share=0.5)).outcome
        for lease in leases[:3]
    ]  # fmt: skip
    assert outcomes == [Outcome.CHANGED, Outcome.CHANGED, Outcome.HELD]
    return leases


async def test_the_guard_bound_holds_for_a_backend_that_heartbeats(port: Port, pool: str) -> None:
    leases = await _fail_three_of_four(port, pool, "10.0.5")
    held = leases[2]
    assert await port.store.heartbeat(pool, held.backend_id, held.lease_id) == 60_000
    result = await port.store.step(pool, held.backend_id, Event.HEALTH_FAIL, actor="health",
                                   detail="Check UNAVAILABLE", max_share=0.5)  # fmt: skip
    assert result.outcome == Outcome.HELD  # within its bound
    await port.pass_ms(BOUND_MS + 50)
    assert await port.store.heartbeat(pool, held.backend_id, held.lease_id) == 60_000
    # Heartbeats or not, the hold ends at the bound: the removal goes through.
    result = await port.store.step(pool, held.backend_id, Event.HEALTH_FAIL, actor="health",
                                   detail="Check UNAVAILABLE", max_share=0.5)  # fmt: skip
    assert result.outcome == Outcome.CHANGED
    assert (await _states(port, pool))[held.backend_id] is BackendState.UNHEALTHY


async def test_a_panic_is_one_episode_with_a_start_and_an_end(port: Port, pool: str) -> None:
    leases = await _fail_three_of_four(port, pool, "10.0.6")
    held = leases[2]
    for _ in range(3):
        await port.pass_ms(20)
        result = await port.store.step(pool, held.backend_id, Event.HEALTH_FAIL, actor="health",
                                       detail="Check UNAVAILABLE", max_share=0.5)  # fmt: skip
        assert result.outcome == Outcome.HELD
    snap = await port.store.snapshot(pool)
    assert snap is not None
    assert [b.id for b in snap.backends if b.held] == [held.backend_id]
    assert next(b for b in snap.backends if b.held).guard_for == "health_fail"
    kinds = [e["kind"] for e in await port.store.events(pool)]
    assert kinds.count("panic") == 1 and "panic_end" not in kinds
    # The backend passes its checks again: the hold, and the episode, end.
    await port.store.step(pool, held.backend_id, Event.HEALTH_PASS, actor="health",
                          detail="", max_share=0.5)  # fmt: skip
    snap = await port.store.snapshot(pool)
    assert snap is not None and not any(b.held for b in snap.backends)
    events = await port.store.events(pool)
    assert [e["kind"] for e in events].count("panic") == 1
    end = events[0]
    assert end["kind"] == "panic_end" and end["backend"] == held.backend_id
    assert f"held 1 backend(s): {held.backend_id}" in end["detail"]


async def test_load_reports_count_once_per_batch(port: Port, pool: str) -> None:
    await port.store.put_pool(PoolConfig(name=pool))
    bucket = int(time.time() // 10)
    fields = {"reports": 2, "started": 30, "finished": 29, "drop:lb": 1}
    assert await port.store.add_reports(pool, "batch-1", bucket, fields, {"abc:f": 5})
    assert not await port.store.add_reports(pool, "batch-1", bucket, fields, {"abc:f": 5})
    assert await port.store.add_reports(pool, "batch-2", bucket, {"reports": 1})
    total = await port.store.load_total(pool)
    assert total["reports"] == 3 and total["started"] == 30 and total["drop:lb"] == 1
    windows = await port.store.load_windows(pool)
    assert windows[0].counts["finished"] == 29 and windows[0].drops == {"lb": 1}
    await port.store.set_stream_counts("replica-a", {pool: 4})
    assert [(r.replica, r.streams) for r in await port.store.replica_streams(pool)] == [
        ("replica-a", 4)
    ]
    await port.store.clear_stream_counts("replica-a", [pool])
    assert await port.store.replica_streams(pool) == []


async def test_a_flush_writes_every_pool_and_the_stream_counts_once(port: Port, pool: str) -> None:
    other = f"{pool}-b"
    for name in (pool, other):
        await port.store.put_pool(PoolConfig(name=name))
    bucket = int(time.time() // 10)
    batch = {
        pool: ({"reports": 2, "started": 5}, {"abc:f": 1}, ["abc|s1"]),
        other: ({"reports": 1, "started": 7}, {}, []),
    }
    for _ in range(2):  # a retry of the same batch id counts once
        await port.store.flush_reports("flush-1", bucket, batch, "replica-a", {pool: 3, other: 1})
    assert (await port.store.load_total(pool))["reports"] == 2
    assert (await port.store.load_total(other))["started"] == 7
    assert await port.store.accusers_since(pool, 0) == {"abc": 1}
    assert [(r.replica, r.streams) for r in await port.store.replica_streams(other)] == [
        ("replica-a", 1)
    ]


async def test_load_reports_by_source_are_apart_and_within_the_totals(
    port: Port, pool: str
) -> None:
    await port.store.put_pool(PoolConfig(name=pool))
    bucket = int(time.time() // 10)
    grpclb = {"reports": 1, "started": 10, "finished": 10, "drop:lb": 2}
    xds = {"reports": 1, "started": 4, "finished": 3, "drop:lb": 1}
    xds |= {"xds:reports": 1, "xds:started": 4, "xds:finished": 3, "xds:dropped": 1}
    await port.store.add_reports(pool, "b-1", bucket, grpclb)
    await port.store.add_reports(pool, "b-2", bucket, xds)
    window = (await port.store.load_windows(pool))[0]
    assert window.counts["finished"] == 13 and window.drops == {"lb": 3}
    sources = window.by_source()
    assert list(sources) == ["grpclb", "xds"]
    assert sources["xds"] == {
        "started": 4, "finished": 3, "failed_to_send": 0, "known_received": 0, "reports": 1,
        "dropped": 1,
    }  # fmt: skip
    assert sources["grpclb"]["finished"] == 10 and sources["grpclb"]["dropped"] == 2
    assert (await port.store.load_total(pool))["xds:finished"] == 3


async def test_xds_streams_per_replica_fresh_ones_only(port: Port, pool: str) -> None:
    a, b = f"{pool}-a", f"{pool}-b"
    row = {"stream_id": "1", "peer": "ipv4:127.0.0.1:1", "node_id": "n", "types": {}}
    await port.store.set_xds_streams(a, [row], 3)
    await port.store.set_xds_streams(b, [], 0)
    mine = [r for r in await port.store.xds_streams() if r.replica in (a, b)]
    assert [(r.replica, r.total, r.streams) for r in mine] == [(a, 3, [row]), (b, 0, [])]
    # An entry not refreshed within the staleness bound is left out.
    later = int(time.time() * 1000) + 60_000
    assert [r for r in await port.store.xds_streams(later) if r.replica in (a, b)] == []
    await port.store.clear_xds_streams(a)
    await port.store.clear_xds_streams(b)
    assert [r for r in await port.store.xds_streams() if r.replica in (a, b)] == []


async def test_signal_samples_one_per_slot_kept_for_the_history(port: Port, pool: str) -> None:
    await port.store.put_pool(PoolConfig(name=pool))
    slot = slot_of(time.time())

    def sample(at: int, **extra: Any) -> dict[str, Any]:
        return {"ts_ms": at * SLOT_SECONDS * 1000, "calls_per_s": None, **extra}

    assert await port.store.signal_history(pool) == []
    assert await port.store.put_signal_sample(pool, slot - 2, sample(slot - 2, v=1)) == 0
    await port.store.put_signal_sample(pool, slot - 2, sample(slot - 2, v=2))  # the same slot
    await port.store.put_signal_sample(pool, slot, sample(slot, backends={"b": {"qps": 1.5}}))
    await port.store.put_signal_sample(pool, slot - 1, sample(slot - 1))
    history = await port.store.signal_history(pool)
    assert history == [
        sample(slot - 2, v=2),
        sample(slot - 1),
        sample(slot, backends={"b": {"qps": 1.5}}),
    ]
    since = (slot - 1) * SLOT_SECONDS * 1000
    recent = await port.store.signal_history(pool, since)
    assert [s["ts_ms"] for s in recent] == [since, since + SLOT_SECONDS * 1000]
    assert await port.store.signal_history(f"{pool}-other") == []
    # A write drops, in the same step, the samples older than the history.
    span = HISTORY_SECONDS // SLOT_SECONDS
    assert await port.store.put_signal_sample(pool, slot - 2 + span, sample(slot - 2 + span)) == 0
    assert await port.store.put_signal_sample(pool, slot + span, sample(slot + span)) == 2
    kept = await port.store.signal_history(pool)
    assert [s["ts_ms"] // (SLOT_SECONDS * 1000) for s in kept] == [
        slot,
        slot - 2 + span,
        slot + span,
    ]


async def test_reported_call_rates_per_whole_load_bucket(port: Port, pool: str) -> None:
    await port.store.put_pool(PoolConfig(name=pool))
    now = time.time()
    current = int(now // 10)
    for n, fields in (
        (current - 91, {"reports": 1, "finished": 10}),  # older than 15 minutes
        (current - 90, {"reports": 1, "finished": 10}),
        (current - 3, {"reports": 2, "finished": 55}),
        (current - 2, {"started": 4}),  # no report finished anything: not known
        (current - 1, {"reports": 1, "started": 3}),
        (current, {"reports": 1, "finished": 99}),  # not a whole bucket yet
    ):
        assert await port.store.add_reports(pool, f"b{n}", n, fields)
    assert await port.store.reported_call_rates(pool, now) == [
        CallRate((current - 90) * 10_000, 1.0),
        CallRate((current - 3) * 10_000, 5.5),
        CallRate((current - 1) * 10_000, 0.0),
    ]
    assert await port.store.reported_call_rates(f"{pool}-other", now) == []


async def test_outcome_counts_are_read_not_reset(port: Port, pool: str) -> None:
    await port.store.put_pool(PoolConfig(name=pool))
    assert await port.store.outcome_counts(pool) == {}
    bucket = int(time.time() // 10)
    outcomes = {**outcome_fields("a", 10, 8, 1), **outcome_fields("b", 3, 3, 0)}
    await port.store.add_reports(pool, "o1", bucket, {"reports": 1}, outcomes)
    expected = {"a": Outcomes(10, 8, 1), "b": Outcomes(3, 3, 0)}
    assert await port.store.outcome_counts(pool) == expected
    assert await port.store.outcome_counts(pool) == expected
    await port.store.add_reports(pool, "o2", bucket, {"reports": 1}, outcome_fields("a", 5, 5, 0))
    assert (await port.store.outcome_counts(pool))["a"] == Outcomes(15, 13, 1)
    # Evidence counts are kept apart from the display counts.
    evidence = outcome_fields("a", 4, 0, 0, 4, evidence=True)
    await port.store.add_reports(pool, "o3", bucket, {"reports": 1}, evidence)
    assert (await port.store.outcome_counts(pool))["a"] == Outcomes(15, 13, 1)


async def test_accusations_are_stamped_per_stream(port: Port, pool: str) -> None:
    await port.store.put_pool(PoolConfig(name=pool))
    bucket = int(time.time() // 10)
    before = await port.store.now_ms() - 1
    await port.store.add_reports(pool, "a1", bucket, {"reports": 2}, {}, ["x|s1", "x|s2", "y|s1"])
    await port.store.add_reports(pool, "a2", bucket, {"reports": 1}, {}, ["x|s1"])
    assert await port.store.accusers_since(pool, before) == {"x": 2, "y": 1}
    await port.pass_ms(20)
    later = await port.store.now_ms()
    assert await port.store.accusers_since(pool, later) == {}


async def test_replica_membership(port: Port, pool: str) -> None:
    a, b = f"{pool}-a", f"{pool}-b"
    assert a in await port.store.touch_replica(a, 60_000)
    live = await port.store.touch_replica(b, 60_000)
    assert {a, b} <= set(live)
    await port.store.forget_replica(a)
    assert a not in await port.store.touch_replica(b, 60_000)


async def test_changes_name_the_pool_that_changed(port: Port, pool: str) -> None:
    feed = port.store.changes()
    try:
        assert await asyncio.wait_for(anext(feed), 5) is None
        await _register(port, pool, "10.0.5.1")
        while (name := await asyncio.wait_for(anext(feed), 5)) != pool:
            pass
        assert name == pool
    finally:
        await feed.aclose()


async def test_a_registry_that_is_away_raises_unavailable_not_a_redis_error() -> None:
    from lookaside.redis_process import free_port

    away = RegistryStore.from_url(f"redis://127.0.0.1:{free_port()}/0", socket_connect_timeout=0.5)
    twin = MemoryStore()
    twin.available = False
    try:
        for store in (away, twin):
            with pytest.raises(errors.Unavailable):
                await store.list_pools()
            with pytest.raises(errors.Unavailable):
                await store.register(pool="p", host="h", ip="10.0.9.1", port=80)
            with pytest.raises(errors.Unavailable):
                await store.add_reports("p", "b", 1, {"reports": 1})
            with pytest.raises(errors.Unavailable):
                await store.touch_replica("r", 1000)
            with pytest.raises(errors.Unavailable):
                await store.put_signal_sample("p", 1, {"ts_ms": 5000})
            with pytest.raises(errors.Unavailable):
                await store.signal_history("p")
            with pytest.raises(errors.Unavailable):
                await store.reported_call_rates("p")
            with pytest.raises(errors.Unavailable):
                await store.outcome_counts("p")
            feed = store.changes()
            with pytest.raises(errors.Unavailable):
                await anext(feed)
    finally:
        await away.close()


async def test_the_declared_state_marker_is_kept(port: Port, pool: str) -> None:
    if port.clock is not None:  # a fresh in-memory store starts without it
        assert not await port.store.has_state_marker()
    await port.store.set_state_marker("1")
    assert await port.store.has_state_marker()


async def test_a_hold_no_one_asserts_any_more_goes_stale() -> None:
    """In the twin only, whose clock moves at will (the prelude's stale_ms()
    is the same rule; against Redis this would wait at least 30 s): a hold
    not asserted for three health intervals is dropped and the episode
    ends; one asserted every interval stays, up to the bound."""
    clock = ManualClock()
    store = MemoryStore(guard_bound_ms=600_000, clock=clock)
    pool = "stale"
    await store.put_pool(PoolConfig.from_flat(pool, health_interval_ms=20_000))
    port = Port(store, clock)
    held = (await _fail_three_of_four(port, pool, "10.0.7"))[2]
    for _ in range(4):  # asserted every interval: held past GUARD_STALE_MS
        clock.now += 20_000
        result = await store.step(pool, held.backend_id, Event.HEALTH_FAIL, actor="health",
                                  detail="Check UNAVAILABLE", max_share=0.5)  # fmt: skip
        assert result.outcome == Outcome.HELD
    clock.now += 60_001  # then no one asserts it for three intervals
    await store.reap_expired(pool, 0.5)
    snap = await store.snapshot(pool)
    assert snap is not None and not any(b.held for b in snap.backends)
    assert (await store.events(pool))[0]["kind"] == "panic_end"
