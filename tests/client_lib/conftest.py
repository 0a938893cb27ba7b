from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support import BalancerHandle, RouteGuideBackend


@pytest.fixture
def backends() -> Iterator[list[RouteGuideBackend]]:
    started: list[RouteGuideBackend] = []

    def start() -> RouteGuideBackend:
        b = RouteGuideBackend().start()
        started.append(b)
        return b

    yield started  # tests append with start_backend below
    for b in started:
        b.stop()


def start_backends(backends: list[RouteGuideBackend], n: int) -> list[RouteGuideBackend]:
    new = [RouteGuideBackend().start() for _ in range(n)]
    backends.extend(new)
    return new


def register_all(
    balancer: BalancerHandle, pool: str, backends: list[RouteGuideBackend]
) -> dict[int, str]:
    """Registers backends (60 s leases) and returns port -> backend id."""
    ids = {}
    for b in backends:
        lease = balancer.run(
            balancer.store.register(
                pool=pool, host="127.0.0.1", ip="127.0.0.1", port=b.port, lease_ttl_ms=60_000
            )
        )
        ids[b.port] = lease.backend_id
    return ids
