"""The panic guard holds removals for a bounded time only, never for a
backend that fails its health checks, and says so (an event and a metric)
while it holds.

The scenario: more dead addresses than half a pool register once and never
heartbeat. Their leases expire together, which the guard takes for an
outage; before, it kept them listed for good."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest

from balancer_server import metrics
from lookaside.redis_process import free_port
from lookaside_registry.model import PoolConfig
from server_common.schemas.pools import BackendCounts, PoolOut
from tests.support import (
    BalancerHandle,
    RouteGuideBackend,
    register_all,
    start_backends,
    wait_until,
)


def listed(balancer: BalancerHandle, pool: str) -> set[int]:
    snap = balancer.run(balancer.store.snapshot(pool))
    return {b.port for b in snap.backends} if snap is not None else set()


def register_dead(balancer: BalancerHandle, pool: str, n: int) -> set[int]:
    ports = {free_port() for _ in range(n)}
    for port in ports:
        balancer.run(
            balancer.store.register(
                pool=pool, host="127.0.0.1", ip="127.0.0.1", port=port, lease_ttl_ms=1000
            )
        )
    return ports


@pytest.fixture
def unbounded_balancer(redis_url: str) -> Iterator[BalancerHandle]:
    handle = BalancerHandle(redis_url, panic_guard_bound=600.0)
    yield handle
    handle.stop()


def test_dead_addresses_that_fail_health_checks_are_not_held(
    unbounded_balancer: BalancerHandle,
    pool_name: str,
    backends: list[RouteGuideBackend],
) -> None:
    balancer = unbounded_balancer
    balancer.run(
        balancer.store.put_pool(
            PoolConfig.from_flat(
                pool_name,
                health_interval_ms=200,
                health_timeout_ms=200,
                unhealthy_threshold=1,
                outlier_detection=False,
            )
        )
    )
    live = start_backends(backends, 2)
    register_all(balancer, pool_name, live)
    dead = register_dead(balancer, pool_name, 3)
    assert listed(balancer, pool_name) == {b.port for b in live} | dead
    # The guard's bound (600 s) is far away: only health verdicts let them go.
    wait_until(lambda: listed(balancer, pool_name) == {b.port for b in live}, timeout=20)


@pytest.fixture
def bounded_balancer(redis_url: str) -> Iterator[BalancerHandle]:
    handle = BalancerHandle(redis_url, panic_guard_bound=1.5, health_checks=False)
    yield handle
    handle.stop()


def test_guard_holds_expired_leases_for_its_bound_and_says_so(
    bounded_balancer: BalancerHandle, pool_name: str, backends: list[RouteGuideBackend]
) -> None:
    balancer = bounded_balancer
    balancer.run(balancer.store.put_pool(PoolConfig.from_flat(pool_name, health_checks=False)))
    live = start_backends(backends, 1)
    register_all(balancer, pool_name, live)
    dead = register_dead(balancer, pool_name, 3)

    def held() -> float:
        value = metrics.REGISTRY.get_sample_value(
            "lookaside_balancer_panic_held_backends", {"pool": pool_name, "source": "lease"}
        )
        return value or 0.0

    wait_until(lambda: held() == 3, timeout=10)
    assert listed(balancer, pool_name) == {live[0].port} | dead  # kept while held
    events = balancer.run(balancer.store.events(pool_name))
    assert any(e["kind"] == "panic" and "at most 1500 ms" in e["detail"] for e in events)
    wait_until(lambda: listed(balancer, pool_name) == {live[0].port}, timeout=15)
    wait_until(lambda: held() == 0, timeout=5)
    kinds = [e["kind"] for e in balancer.run(balancer.store.events(pool_name))]
    assert "expired" in kinds


@pytest.fixture
def checking_balancer(redis_url: str) -> Iterator[BalancerHandle]:
    handle = BalancerHandle(redis_url, panic_guard_bound=3.0)
    yield handle
    handle.stop()


def test_a_heartbeating_backend_that_fails_health_checks_is_held_for_the_bound_only(
    checking_balancer: BalancerHandle, pool_name: str, backends: list[RouteGuideBackend]
) -> None:
    """Two of three backends fail their health checks and keep heartbeating:
    one goes at once, the other is held (one panic episode, the gauge and
    the pool's counts say so) and goes when the bound is up."""
    balancer = checking_balancer
    balancer.run(
        balancer.store.put_pool(
            PoolConfig.from_flat(
                pool_name,
                health_interval_ms=200,
                health_timeout_ms=500,
                unhealthy_threshold=1,
                outlier_detection=False,
            )
        )
    )
    three = start_backends(backends, 3)
    leases = [
        balancer.run(
            balancer.store.register(
                pool=pool_name, host="127.0.0.1", ip="127.0.0.1", port=b.port, lease_ttl_ms=60_000
            )
        )
        for b in three
    ]
    stop = threading.Event()

    def heartbeat() -> None:
        while not stop.wait(0.3):
            for lease in leases:
                balancer.run(balancer.store.heartbeat(pool_name, lease.backend_id, lease.lease_id))

    beating = threading.Thread(target=heartbeat, daemon=True)
    beating.start()

    def held() -> float:
        value = metrics.REGISTRY.get_sample_value(
            "lookaside_balancer_panic_held_backends", {"pool": pool_name, "source": "health"}
        )
        return value or 0.0

    def counts() -> BackendCounts:
        snap = balancer.run(balancer.store.snapshot(pool_name))
        return PoolOut.from_snapshot(snap).backends

    try:
        for b in three[1:]:
            b.set_serving(False)
        wait_until(lambda: held() == 1, timeout=10)
        c = counts()
        assert (c.serving, c.held, c.unhealthy) == (1, 1, 1)
        # Heartbeats go on; the hold still ends at its bound (3 s).
        wait_until(lambda: counts().unhealthy == 2, timeout=15)
        wait_until(lambda: held() == 0, timeout=5)
        assert (counts().serving, counts().held) == (1, 0)
        kinds = [e["kind"] for e in balancer.run(balancer.store.events(pool_name))]
        assert kinds.count("panic") == 1 and kinds.count("panic_end") == 1
    finally:
        stop.set()
        beating.join(timeout=5)
