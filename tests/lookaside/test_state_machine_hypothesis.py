"""Hypothesis drives random sequences of operations from every actor (the
backend itself, lease expiry, health checking, outlier detection, an
operator, static registration) against the registry, and checks after each
step: no state outside the table, operators' holds kept, the panic guard's
bound respected, versions strictly increasing, static backends untouched by
self-registration. The in-memory twin gets many runs with a moving clock;
a real Redis gets fewer."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from lookaside_registry import errors
from lookaside_registry.machine import HOLDS, TABLE, Actor, Event, Key, Outcome, key_of
from lookaside_registry.memory import MemoryStore
from lookaside_registry.model import Backend, PoolConfig, backend_id_for
from lookaside_registry.store import RegistryStore

BOUND_MS = 1_000
SELF_IPS = [f"10.7.0.{i}" for i in range(1, 4)]
STATIC_IPS = ["10.7.1.1"]
OPERATOR_EVENTS = [e for e, r in TABLE.items() if r.actor is Actor.OPERATOR]
VERDICTS = [Event.HEALTH_FAIL, Event.HEALTH_PASS, Event.EJECT, Event.EJECTION_END]


class Clock:
    def __init__(self) -> None:
        self.now = 1_800_000_000_000

    def __call__(self) -> int:
        return self.now


class RegistryMachine(RuleBasedStateMachine):
    redis_url: str | None = None

    def __init__(self) -> None:
        super().__init__()
        self.loop = asyncio.new_event_loop()
        self.clock = Clock()
        if self.redis_url is None:
            self.store: Any = MemoryStore(guard_bound_ms=BOUND_MS, clock=self.clock)
        else:
            self.store = self.run(self._redis_store())
        self.pool = f"h-{uuid.uuid4().hex[:10]}"
        self.run(self.store.put_pool(PoolConfig(name=self.pool, lease_ttl_ms=2_000)))
        self.leases: dict[str, str] = {}  # backend id -> current lease id
        self.holds: dict[str, Key] = {}  # what operators asked for and did not lift
        self.version = 0
        self.static: set[str] = set()  # ids registered by static_add, not removed

    async def _redis_store(self) -> RegistryStore:
        assert self.redis_url is not None
        return RegistryStore.from_url(self.redis_url, guard_bound_ms=BOUND_MS)

    def run(self, coro: Any) -> Any:
        return self.loop.run_until_complete(coro)

    def teardown(self) -> None:
        self.run(self.store.close())
        self.loop.close()

    def _saw(self, version: int) -> None:
        assert version > self.version, (version, self.version)
        self.version = version

    # -- the backend itself --------------------------------------------------

    @rule(ip=st.sampled_from(SELF_IPS + STATIC_IPS))
    def register(self, ip: str) -> None:
        bid = backend_id_for(ip, 80)
        try:
            lease = self.run(self.store.register(pool=self.pool, host="h", ip=ip, port=80))
        except errors.RefusedByHold:
            assert bid in self.static
            return
        assert bid not in self.static
        self.leases[bid] = lease.lease_id
        self._saw(lease.version)
        hold = self.holds.get(bid)
        if hold is not None:
            assert self._key(bid) is hold, "an operator's hold was lost on registration"

    @rule(ip=st.sampled_from(SELF_IPS + STATIC_IPS), event=st.sampled_from(
        [Event.HEARTBEAT, Event.DRAIN, Event.DEREGISTER]), stale=st.booleans())  # fmt: skip
    def self_event(self, ip: str, event: Event, stale: bool) -> None:
        bid = backend_id_for(ip, 80)
        lease = "0" * 16 if stale else self.leases.get(bid, "")
        before = self._key(bid)
        try:
            if event is Event.HEARTBEAT:
                self.run(self.store.heartbeat(self.pool, bid, lease))
            elif event is Event.DRAIN:
                self.run(self.store.drain(self.pool, bid, lease))
            else:
                self.run(self.store.deregister(self.pool, bid, lease))
                self.leases.pop(bid, None)
        except errors.LeaseRefused:
            assert stale or bid not in self.leases or before is Key.ABSENT
        except errors.RefusedByHold:
            assert bid in self.static
        except errors.NotFound:
            assert before is Key.ABSENT
        else:
            assert bid not in self.static and not stale

    # -- lease expiry, health checking, outlier detection ----------------------

    @precondition(lambda self: self.redis_url is None)
    @rule(ms=st.integers(min_value=100, max_value=3_000))
    def time_passes_and_leases_are_reaped(self, ms: int) -> None:
        self.clock.now += ms
        result = self.run(self.store.reap_expired(self.pool, 0.5))
        snap = self.run(self.store.snapshot(self.pool))
        for b in snap.backends:
            if b.id in result.held:
                assert 0 <= self.clock.now - b.guard_since_ms < BOUND_MS, "held past the bound"
        for bid in result.removed:
            self.leases.pop(bid, None)

    @rule(ip=st.sampled_from(SELF_IPS + STATIC_IPS), event=st.sampled_from(VERDICTS))
    def verdict(self, ip: str, event: Event) -> None:
        bid = backend_id_for(ip, 80)
        before = self._key(bid)
        try:
            result = self.run(self.store.step(self.pool, bid, event, actor=TABLE[event].actor.value,
                                              max_share=0.5))  # fmt: skip
        except errors.NotFound:
            assert before is Key.ABSENT
            return
        expected = TABLE[event].rows.get(before)
        if result.outcome is Outcome.CHANGED:
            self._saw(result.version)
            assert self._key(bid) is expected
        elif result.outcome is Outcome.HELD:
            assert TABLE[event].guarded and self._key(bid) is before
        else:
            assert self._key(bid) is before

    # -- operators -------------------------------------------------------------

    @rule(ip=st.sampled_from(SELF_IPS + STATIC_IPS), event=st.sampled_from(OPERATOR_EVENTS))
    def operator(self, ip: str, event: Event) -> None:
        bid = backend_id_for(ip, 80)
        before = self._key(bid)
        try:
            result = self.run(self.store.operate(self.pool, bid, event, actor="op"))
        except errors.TransitionRefused:
            assert TABLE[event].rows.get(before) is None
            return
        except errors.NotFound:
            assert before is Key.ABSENT
            return
        after = self._key(bid)
        assert after is (TABLE[event].rows.get(before) or Key.ABSENT)
        if result.outcome is Outcome.CHANGED:
            self._saw(result.version)
        if after is Key.ABSENT:
            self.static.discard(bid)
            self.leases.pop(bid, None)
        if after in HOLDS:
            self.holds[bid] = after
        elif result.outcome is Outcome.CHANGED or event is Event.OPERATOR_REMOVE:
            self.holds.pop(bid, None)

    @rule(ip=st.sampled_from(STATIC_IPS))
    def static_add(self, ip: str) -> None:
        bid = backend_id_for(ip, 80)
        backend = Backend(id=bid, pool=self.pool, host="h", ip=ip, port=80)
        try:
            self._saw(self.run(self.store.put_static(backend)))
        except errors.Conflict:
            assert self._key(bid) is not Key.ABSENT
        else:
            self.static.add(bid)

    # -- invariants ----------------------------------------------------------------

    def _key(self, bid: str) -> Key:
        snap = self.run(self.store.snapshot(self.pool))
        for b in snap.backends:
            if b.id == bid:
                return key_of(b.state.value, b.hold)
        return Key.ABSENT

    @invariant()
    def states_are_in_the_table_and_holds_are_kept(self) -> None:
        snap = self.run(self.store.snapshot(self.pool))
        assert snap.version >= self.version
        stored_holds = self.run(self.store.holds(self.pool))
        assert {bid: Key(h) for bid, h in stored_holds.items()} == self.holds
        for b in snap.backends:
            key = key_of(b.state.value, b.hold)  # raises for a state outside the table
            assert key is not Key.ABSENT
            if key in HOLDS:
                assert self.holds.get(b.id) is key
            elif b.id in self.holds:
                pytest.fail(f"backend {b.id} is {key} but an operator holds it {self.holds[b.id]}")
            assert b.static == (b.id in self.static)
            if b.static:
                assert b.lease_id == ""


SETTINGS = settings(
    max_examples=150, stateful_step_count=40, deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)  # fmt: skip


def test_registry_state_machine_in_memory() -> None:
    machine = type("MemoryMachine", (RegistryMachine,), {"redis_url": None})
    run_state_machine_as_test(machine, settings=SETTINGS)


def test_registry_state_machine_on_redis(redis_url: str) -> None:
    machine = type("RedisMachine", (RegistryMachine,), {"redis_url": redis_url})
    run_state_machine_as_test(
        machine, settings=settings(SETTINGS, max_examples=10, stateful_step_count=25)
    )
