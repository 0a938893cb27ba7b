"""A backend SIGSTOPped under load (calls with a 1 s deadline): its
connection stays up, so no client can tell it from a slow one; calls to it
time out until the balancer's health checks take it out of the list. After
that no call fails. Each run prints a `stop-under-load:` row."""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from lookaside_registry.model import PoolConfig
from tests.client_lib.scripted import Client, demo_backends
from tests.demo.conftest import DemoServerProcess
from tests.support import BalancerHandle, wait_until

AFTER_REMOVAL = 400  # calls made once the stopped backend left the list
CALL_DEADLINE_S = 1.0


@pytest.fixture
def three_backends(
    balancer: BalancerHandle, pool_name: str, tmp_path: Path
) -> Iterator[list[DemoServerProcess]]:
    # Probes every 500 ms with a 500 ms timeout; two misses take a backend
    # out. Tenths of a second would fail healthy backends' probes and calls
    # on a loaded machine.
    balancer.run(
        balancer.store.put_pool(
            PoolConfig.from_flat(pool_name, health_interval_ms=500, health_timeout_ms=500)
        )
    )
    with demo_backends(balancer.address, pool_name, tmp_path) as procs:
        yield procs


@pytest.mark.parametrize("kind", ["sync", "aio"])
def test_stopped_backend_fails_calls_only_until_it_leaves_the_list(
    three_backends,
    pool_name,
    balancer,
    kind,  # type: ignore[no-untyped-def]
) -> None:
    c = Client(kind, pool_name, balancer.address)
    try:
        wait_until(lambda: len(c.ready()) == 3, timeout=20)
        stopped = three_backends[0]
        lock = threading.Lock()
        failed_before = failed_after = calls = 0
        removed_at: list[float] = []
        after = 0
        done = threading.Event()

        def worker() -> None:
            nonlocal failed_before, failed_after, calls, after
            while not done.is_set():
                started = time.monotonic()
                result = c.call(timeout=CALL_DEADLINE_S)
                with lock:
                    calls += 1
                    late = bool(removed_at) and started > removed_at[0]
                    if isinstance(result, grpc.StatusCode):
                        if late:
                            failed_after += 1
                        else:
                            failed_before += 1
                    if late:
                        after += 1
                        if after >= AFTER_REMOVAL:
                            done.set()

        threads = [threading.Thread(target=worker) for _ in range(8)]
        for t in threads:
            t.start()
        wait_until(lambda: calls >= 200, timeout=30)
        stopped.proc.send_signal(signal.SIGSTOP)
        wait_until(lambda: stopped.address not in {a for a, _ in c.channel.backends()}, timeout=30)
        removed_at.append(time.monotonic())
        assert done.wait(60)
        for t in threads:
            t.join(10)
    finally:
        c.close()
    print(
        f"\nstop-under-load: thin {kind} in_flight=8 calls={calls} "
        f"failed_before_removal={failed_before} failed_after_removal={failed_after}"
    )
    assert failed_after == 0
