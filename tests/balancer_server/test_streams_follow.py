"""Streams follow the pools: a stream bound to a less exact pool moves when
a more exact one appears, and moves back when that one is deleted. The race
test opens streams while the exact pool is being registered, with many other
pools and a busy CPU, so that both orders happen."""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Iterator

import pytest

from tests.support import BalancerHandle, LbStream, wait_until


def register(balancer: BalancerHandle, pool: str, port: int) -> None:
    balancer.run(
        balancer.store.register(
            pool=pool, host="127.0.0.1", ip="127.0.0.1", port=port, lease_ttl_ms=120_000
        )
    )


def addresses_eventually(stream: LbStream, want: list[str], timeout: float = 10.0) -> list[str]:
    """Reads lists until one is `want` (returned) or the bound passes (the
    last list seen is returned)."""
    deadline = time.monotonic() + timeout
    seen: list[str] = []
    while time.monotonic() < deadline:
        try:
            seen = [a for a, _, _ in stream.next_list(max(deadline - time.monotonic(), 0.01))]
        except queue.Empty:
            break
        if seen == want:
            break
    return seen


@pytest.fixture
def burner() -> Iterator[None]:
    """A thread that keeps the interpreter busy, so the balancer's loop runs
    late and both orders of a race happen."""
    stop = threading.Event()

    def burn() -> None:
        while not stop.is_set():
            sum(i * i for i in range(20_000))

    thread = threading.Thread(target=burn, daemon=True)
    thread.start()
    yield
    stop.set()
    thread.join(5)


def test_stream_moves_to_a_more_exact_pool_and_back(
    balancer: BalancerHandle, pool_name: str
) -> None:
    full = f"{pool_name}.example.test"
    register(balancer, pool_name, 9501)
    wait_until(lambda: balancer.server.watcher.get(pool_name) is not None)
    stream = LbStream(balancer.address, f"{full}:443")
    try:
        assert stream.next().HasField("initial_response")
        assert addresses_eventually(stream, ["127.0.0.1:9501"]) == ["127.0.0.1:9501"]
        register(balancer, full, 9502)
        assert addresses_eventually(stream, ["127.0.0.1:9502"]) == ["127.0.0.1:9502"]
        balancer.run(balancer.store.delete_pool(full))
        assert addresses_eventually(stream, ["127.0.0.1:9501"]) == ["127.0.0.1:9501"]
    finally:
        stream.close()


ITERATIONS = 25


def test_streams_opened_while_the_exact_pool_appears_end_on_it(
    balancer: BalancerHandle, pool_name: str, burner: None
) -> None:
    for i in range(20):
        register(balancer, f"{pool_name}-extra{i}", 9600 + i)
    wrong: list[int] = []
    moved = 0  # iterations where the stream got the first-label pool's list first
    for i in range(ITERATIONS):
        base = f"{pool_name}-r{i}"
        full = f"{base}.example.test"
        register(balancer, base, 9700)
        wait_until(lambda b=base: balancer.server.watcher.get(b) is not None)  # type: ignore[misc]
        stream = LbStream(balancer.address, f"{full}:50051")
        try:
            register(balancer, full, 9800 + i)
            want = [f"127.0.0.1:{9800 + i}"]
            first = [a for a, _, _ in stream.next_list(5.0)]
            moved += first == ["127.0.0.1:9700"]
            if first != want and addresses_eventually(stream, want, timeout=5.0) != want:
                wrong.append(i)
        finally:
            stream.close()
    assert wrong == [], f"streams left on the first-label pool in iterations {wrong}"
    # Both orders happened: some streams were bound before the exact pool
    # was loaded (else this test would prove nothing about moving).
    assert 0 < moved, "no stream was opened before the exact pool was loaded"
