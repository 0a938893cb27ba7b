"""Stock grpcio on `xds:///POOL` (bootstrap in GRPC_XDS_BOOTSTRAP_CONFIG)
against a real balancer and Redis: the spread, registrations, drains,
ejections, drops, a balancer that dies and comes back, and a refused
resource."""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable, Iterator

import pytest

from balancer_server.xds import metrics as xds_metrics
from balancer_server.xds.resources import ENDPOINTS
from lookaside_registry.machine import Event, Outcome
from lookaside_registry.model import DropRate, PoolConfig
from tests.support import (
    BalancerHandle,
    RouteGuideBackend,
    register_all,
    start_backends,
    wait_until,
)
from tests.xds.helpers import XdsClient, bootstrap, plain_pool, steady_port


@pytest.fixture
def clients() -> Iterator[Callable[..., XdsClient]]:
    started: list[XdsClient] = []

    def start(pool: str, address: str, **kw: object) -> XdsClient:
        client = XdsClient(pool, bootstrap(address, **kw))  # type: ignore[arg-type]
        started.append(client)
        return client

    yield start
    for client in started:
        client.close()


def warm(client: XdsClient, names: set[str], timeout: float = 30.0) -> None:
    """Calls until every backend named has answered (its connection is up)."""
    seen: Counter[str] = Counter()

    def step() -> bool:
        seen.update(client.calls(6, timeout=10))
        return names <= set(seen)

    wait_until(step, timeout=timeout, interval=0)


def names(backends: list[RouteGuideBackend]) -> set[str]:
    return {b.name for b in backends}


def test_calls_spread_evenly_and_a_registration_reaches_them(
    balancer: BalancerHandle,
    backends: list[RouteGuideBackend],
    pool_name: str,
    clients: Callable[..., XdsClient],
) -> None:
    plain_pool(balancer, pool_name)
    first = start_backends(backends, 3)
    register_all(balancer, pool_name, first)
    client = clients(pool_name, balancer.address)
    warm(client, names(first))
    assert client.calls(300) == Counter({b.name: 100 for b in first})
    (fourth,) = start_backends(backends, 1)
    register_all(balancer, pool_name, [fourth])
    warm(client, {fourth.name})
    assert client.calls(400) == Counter({b.name: 100 for b in backends})


def test_a_drain_a_failed_health_check_and_an_ejection_leave_backends_out(
    balancer: BalancerHandle,
    backends: list[RouteGuideBackend],
    pool_name: str,
    clients: Callable[..., XdsClient],
) -> None:
    plain_pool(balancer, pool_name)
    five = start_backends(backends, 5)
    ids = register_all(balancer, pool_name, five)
    client = clients(pool_name, balancer.address)
    warm(client, names(five))
    drained, failed, ejected, *rest = five
    # DRAINING and UNHEALTHY endpoints, and an ejected one left out.
    balancer.run(
        balancer.store.operate(pool_name, ids[drained.port], Event.OPERATOR_DRAIN, actor="test")
    )
    result = balancer.run(
        balancer.store.step(
            pool_name, ids[failed.port], Event.HEALTH_FAIL, actor="test", max_share=0.5
        )
    )
    assert result.outcome is Outcome.CHANGED, result
    # An ejection as outlier detection makes one: for a while (ten minutes).
    until = balancer.run(balancer.store.now_ms()) + 600_000
    balancer.run(
        balancer.store.update_backend(pool_name, ids[ejected.port], ejected_until_ms=until)
    )
    result = balancer.run(
        balancer.store.step(pool_name, ids[ejected.port], Event.EJECT, actor="test", max_share=0.5)
    )
    assert result.outcome is Outcome.CHANGED, result
    wait_until(lambda: set(client.calls(20)) == names(rest), timeout=30, interval=0)
    assert client.calls(100) == Counter({b.name: 50 for b in rest})


def test_drops_are_applied(
    balancer: BalancerHandle,
    backends: list[RouteGuideBackend],
    pool_name: str,
    clients: Callable[..., XdsClient],
) -> None:
    plain_pool(balancer, pool_name)
    three = start_backends(backends, 3)
    register_all(balancer, pool_name, three)
    client = clients(pool_name, balancer.address)
    warm(client, names(three))
    config = PoolConfig.from_flat(pool_name, health_checks=False, drops=(DropRate("shed", 500),))
    balancer.run(balancer.store.put_pool(config))

    def dropping() -> bool:
        seen, details = client.first_error(40)
        return seen["error:UNAVAILABLE"] > 0 and "shed" in details

    wait_until(dropping, timeout=30, interval=0)
    seen = client.calls(400)
    dropped = seen.pop("error:UNAVAILABLE", 0)
    # A 50% drop rate: 200 expected, +-5 standard deviations (10 calls).
    assert 150 <= dropped <= 250, (dropped, seen)
    assert set(seen) == names(three)


def test_the_client_keeps_its_endpoints_while_the_balancer_is_down(
    redis_url: str,
    backends: list[RouteGuideBackend],
    pool_name: str,
    clients: Callable[..., XdsClient],
) -> None:
    balancer = BalancerHandle(redis_url, listen=f"127.0.0.1:{steady_port()}")
    try:
        plain_pool(balancer, pool_name)
        three = start_backends(backends, 3)
        register_all(balancer, pool_name, three)
        client = clients(pool_name, balancer.address)
        warm(client, names(three))
        balancer.stop()
        time.sleep(1.0)
        down = client.calls(90)
        assert down == Counter({b.name: 30 for b in three}), down
        balancer = BalancerHandle(redis_url, listen=balancer.address)
        (fourth,) = start_backends(backends, 1)
        register_all(balancer, pool_name, [fourth])
        # Reconnected (backoff of a second or a few) and updated.
        warm(client, {fourth.name}, timeout=60)
        again = client.calls(120)
        assert again == Counter({b.name: 30 for b in backends}), again
    finally:
        balancer.stop()


def test_a_refused_assignment_is_logged_and_the_last_good_one_kept(
    balancer: BalancerHandle,
    backends: list[RouteGuideBackend],
    pool_name: str,
    clients: Callable[..., XdsClient],
    caplog: pytest.LogCaptureFixture,
) -> None:
    plain_pool(balancer, pool_name)
    three = start_backends(backends, 3)
    register_all(balancer, pool_name, three)
    client = clients(pool_name, balancer.address, node_id="nack-test")
    warm(client, names(three))
    before = xds_metrics.XDS_NACKS.labels("eds")._value.get()

    def zero_weights(type_url: str, message: object) -> None:
        # gRPC's client refuses an endpoint weight of 0.
        if type_url == ENDPOINTS:
            for locality in message.endpoints:  # type: ignore[attr-defined]
                for endpoint in locality.lb_endpoints:
                    endpoint.load_balancing_weight.value = 0

    def stream() -> dict[str, object]:
        (entry,) = [
            s for s in balancer.server.xds_streams.snapshot() if s["node_id"] == "nack-test"
        ]
        return entry

    good = stream()["acked"][ENDPOINTS]  # type: ignore[index]
    with caplog.at_level(logging.WARNING, logger="lookaside.balancer.xds"):
        balancer.server.xds_hub.mutate = zero_weights
        (bad,) = start_backends(backends, 1)
        register_all(balancer, pool_name, [bad])
        wait_until(lambda: ENDPOINTS in stream()["nacked"], timeout=30)  # type: ignore[operator]
    nacked = stream()["nacked"][ENDPOINTS]  # type: ignore[index]
    assert "weight" in nacked["error"], nacked
    assert stream()["acked"][ENDPOINTS] == good  # type: ignore[index]
    assert xds_metrics.XDS_NACKS.labels("eds")._value.get() == before + 1
    assert any(
        "refused" in r.getMessage() and nacked["version"] in r.getMessage() for r in caplog.records
    )
    # The client calls on with the assignment it had.
    assert client.calls(90) == Counter({b.name: 30 for b in three})
    # A valid assignment after it is taken.
    balancer.server.xds_hub.mutate = None
    (good_one,) = start_backends(backends, 1)
    register_all(balancer, pool_name, [good_one])
    warm(client, {bad.name, good_one.name})
    assert client.calls(150) == Counter({b.name: 30 for b in backends})


def test_weights_are_followed_through_ring_hash(
    balancer: BalancerHandle,
    backends: list[RouteGuideBackend],
    pool_name: str,
    clients: Callable[..., XdsClient],
) -> None:
    """Unequal weights: the Cluster asks for RING_HASH (gRPC's ROUND_ROBIN
    ignores endpoint weights), which with no hash policy picks a random
    point per call, so shares follow the weights."""
    plain_pool(balancer, pool_name)
    light, heavy = start_backends(backends, 2)
    for b, weight in ((light, 1), (heavy, 3)):
        balancer.run(
            balancer.store.register(
                pool=pool_name, host="127.0.0.1", ip="127.0.0.1", port=b.port,
                weight=weight, lease_ttl_ms=60_000,
            )
        )  # fmt: skip
    client = clients(pool_name, balancer.address)
    warm(client, names([light, heavy]))
    seen = client.calls(400)
    # 3/4 expected: 300 +- 5 standard deviations (about 43).
    assert 257 <= seen[heavy.name] <= 343 and seen[light.name] + seen[heavy.name] == 400, seen
