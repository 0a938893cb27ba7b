"""Active health checking, the panic guard, and ownership of probes across
replicas, with real backends, a real Redis and real balancers."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest

from lookaside.redis_process import free_port
from lookaside_registry import keys
from lookaside_registry.model import BackendState, PoolConfig
from tests.support import BalancerHandle, LbStream, RouteGuideBackend, wait_until

FAST = dict(
    health_interval_ms=150, health_timeout_ms=300, unhealthy_threshold=2, healthy_threshold=2
)


@pytest.fixture
def checked(redis_url: str) -> Iterator[BalancerHandle]:
    handle = BalancerHandle(redis_url, health_checks=True, replica_id="solo")
    yield handle
    handle.stop()


def states(redis_client, pool: str) -> dict[int, str]:  # type: ignore[no-untyped-def]
    return {
        json.loads(v)["port"]: json.loads(v)["state"]
        for v in redis_client.hvals(keys.backends(pool))
    }


def probing(handle: BalancerHandle, pool: str) -> int:
    return sum(1 for p, _ in list(handle.server.checker.probers) if p == pool)


def register(handle: BalancerHandle, pool: str, port: int, ttl_ms: int = 60_000) -> str:
    lease = handle.run(
        handle.store.register(
            pool=pool, host="127.0.0.1", ip="127.0.0.1", port=port, lease_ttl_ms=ttl_ms
        )
    )
    return lease.backend_id


def test_not_serving_leaves_the_list_and_comes_back(
    checked: BalancerHandle, pool_name: str, redis_client
) -> None:  # type: ignore[no-untyped-def]
    backends = [RouteGuideBackend().start() for _ in range(3)]
    try:
        checked.run(checked.store.put_pool(PoolConfig.from_flat(pool_name, **FAST)))
        for b in backends:
            register(checked, pool_name, b.port)
        stream = LbStream(checked.address, pool_name)
        stream.next()
        sick = backends[1]
        wait_until(lambda: probing(checked, pool_name) == 3)
        sick.set_serving(False)
        wait_until(lambda: states(redis_client, pool_name)[sick.port] == "unhealthy")
        while True:
            entries = stream.next_list()
            if len(entries) == 2:
                break
        assert f"127.0.0.1:{sick.port}" not in {a for a, _, _ in entries}
        sick.set_serving(True)
        wait_until(lambda: states(redis_client, pool_name)[sick.port] == "serving")
        while len(entries) != 3:
            entries = stream.next_list()
        kinds = [e["kind"] for e in checked.run(checked.store.events(pool_name))]
        assert kinds.index("healthy") < kinds.index("unhealthy")
        stream.close()
    finally:
        for b in backends:
            b.stop()


def test_frozen_backend_leaves_the_list(
    checked: BalancerHandle, pool_name: str, redis_client
) -> None:  # type: ignore[no-untyped-def]
    """A backend process stopped with SIGSTOP answers nothing: its health
    checks time out and it leaves the list."""
    port = free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "lookaside",
            "routeguide",
            "server",
            "--listen",
            f"127.0.0.1:{port}",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    others = [RouteGuideBackend().start() for _ in range(2)]
    try:
        checked.run(checked.store.put_pool(PoolConfig.from_flat(pool_name, **FAST)))
        deadline = time.monotonic() + 20
        import socket

        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", port), 0.2).close()
                break
            except OSError:
                time.sleep(0.05)
        for p in [port, *(b.port for b in others)]:
            register(checked, pool_name, p)
        wait_until(lambda: probing(checked, pool_name) == 3)
        assert states(redis_client, pool_name)[port] == "serving"
        os.kill(proc.pid, signal.SIGSTOP)
        wait_until(lambda: states(redis_client, pool_name)[port] == "unhealthy", timeout=15)
        stream = LbStream(checked.address, pool_name)
        stream.next()
        # (the balancer may still hold the list from before the probe's verdict)
        want = {f"127.0.0.1:{b.port}" for b in others}
        stream.list_where(lambda entries: {a for a, _, _ in entries} == want)
        stream.close()
    finally:
        os.kill(proc.pid, signal.SIGCONT)
        proc.terminate()
        proc.wait(10)
        for b in others:
            b.stop()


def test_health_checks_never_remove_more_than_half(
    checked: BalancerHandle, pool_name: str, redis_client
) -> None:  # type: ignore[no-untyped-def]
    backends = [RouteGuideBackend().start() for _ in range(4)]
    try:
        checked.run(checked.store.put_pool(PoolConfig.from_flat(pool_name, **FAST)))
        for b in backends:
            register(checked, pool_name, b.port)
        wait_until(lambda: probing(checked, pool_name) == 4)
        for b in backends[:3]:
            b.set_serving(False)
        wait_until(
            lambda: any(e["kind"] == "panic" for e in checked.run(checked.store.events(pool_name)))
        )
        wait_until(lambda: list(states(redis_client, pool_name).values()).count("unhealthy") == 2)
        # The guard holds: still exactly two of four ejected after more rounds.
        time.sleep(1.0)
        assert list(states(redis_client, pool_name).values()).count("unhealthy") == 2
    finally:
        for b in backends:
            b.stop()


def test_all_unhealthy_still_lists_them_rather_than_nothing(pool_name: str) -> None:
    from balancer_server.lists import build_entries
    from lookaside_registry.model import Backend, PoolSnapshot

    backends = tuple(
        Backend(
            id=f"b{i}",
            pool=pool_name,
            host="h",
            ip="10.0.0.1",
            port=80 + i,
            state=BackendState.UNHEALTHY,
        )
        for i in range(2)
    )
    snap = PoolSnapshot(pool_name, 1, PoolConfig(name=pool_name), backends)
    assert [e.port for e in build_entries(snap, "e")] == [80, 81]


def test_lease_panic_guard_keeps_three_of_four(
    balancer: BalancerHandle, pool_name: str, redis_client
) -> None:  # type: ignore[no-untyped-def]
    ids = [register(balancer, pool_name, 9600 + i) for i in range(4)]
    stream = LbStream(balancer.address, pool_name)
    stream.next()
    stream.list_where(lambda entries: len(entries) == 4)
    # Three leases end at the same instant, as after a network partition.
    deadline = int(redis_client.time()[0]) * 1000 + 300
    redis_client.zadd(keys.leases(pool_name), {i: deadline for i in ids[:3]})
    wait_until(
        lambda: any(e["kind"] == "panic" for e in balancer.run(balancer.store.events(pool_name)))
    )
    assert redis_client.hlen(keys.backends(pool_name)) == 4
    assert not any(e["kind"] == "expired" for e in balancer.run(balancer.store.events(pool_name)))
    # The late client still gets all four.
    late = LbStream(balancer.address, pool_name)
    late.next()
    assert len(late.next_list()) == 4
    late.close()
    stream.close()


def test_two_replicas_split_probes_and_survivor_takes_over(redis_url: str, pool_name: str) -> None:
    a = BalancerHandle(redis_url, health_checks=True, replica_id=f"{pool_name}-a")
    b = BalancerHandle(redis_url, health_checks=True, replica_id=f"{pool_name}-b")
    backends = [RouteGuideBackend().start() for _ in range(16)]
    try:
        a.run(a.store.put_pool(PoolConfig.from_flat(pool_name, health_interval_ms=500)))
        for be in backends:
            register(a, pool_name, be.port)

        def mine(h: BalancerHandle) -> set[str]:
            return {bid for p, bid in h.server.checker.probers if p == pool_name}

        wait_until(lambda: len(mine(a) | mine(b)) == 16 and not (mine(a) & mine(b)), timeout=15)
        assert mine(a) and mine(b)
        a.stop()
        wait_until(lambda: len(mine(b)) == 16, timeout=15)
    finally:
        a.stop()
        b.stop()
        for be in backends:
            be.stop()
