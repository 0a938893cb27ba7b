"""Hostile ADS clients against a real balancer and Redis, on raw streams
from a stock grpcio stub: what they send is refused or ignored, and
nothing of it is kept."""

from __future__ import annotations

from collections.abc import Iterator

import grpc
import pytest

from balancer_server.xds import ads as ads_module
from balancer_server.xds import hub as hub_module
from balancer_server.xds.resources import CLUSTER, ENDPOINTS, LISTENER
from tests.support import BalancerHandle, RouteGuideBackend, register_all, start_backends
from tests.xds.helpers import AdsRaw, wait_settled


@pytest.fixture
def streams() -> Iterator[list[AdsRaw]]:
    opened: list[AdsRaw] = []
    yield opened
    for stream in opened:
        stream.close()


def test_a_refused_flood_of_names_is_not_kept(
    balancer: BalancerHandle, streams: list[AdsRaw]
) -> None:
    stream = AdsRaw(balancer.address)
    streams.append(stream)
    stream.request(LISTENER, [f"name-{i}" for i in range(50_000)])
    with pytest.raises(grpc.RpcError) as refused:
        stream.next()
    assert refused.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert "50000 LDS names subscribed; at most 100" in refused.value.details()
    ads = balancer.server.ads
    assert all(len(names) <= ads_module.MAX_NAMES_PER_TYPE for names in ads._shared_names)


def test_a_resubscription_storm_pins_a_bounded_number_of_names(
    balancer: BalancerHandle, streams: list[AdsRaw], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(ads_module, "MAX_SHARED_NAMES", 500)
    stream = AdsRaw(balancer.address)
    streams.append(stream)
    for i in range(60):  # 60 distinct sets of 100 names: 6000 names
        stream.request(CLUSTER, [f"s{i}-{j}" for j in range(100)])
    stream.request(CLUSTER, ["last"])
    while not stream.quiet(1.0):
        stream.next()
    assert stream.error is None  # every set was a valid subscription
    ads = balancer.server.ads
    assert sum(len(names) for names in ads._shared_names) <= 500
    assert ads._shared_count == sum(len(names) for names in ads._shared_names)


def test_an_ack_naming_a_version_never_sent_records_the_version_sent(
    balancer: BalancerHandle,
    streams: list[AdsRaw],
    pool_name: str,
    backends: list[RouteGuideBackend],
) -> None:
    register_all(balancer, pool_name, start_backends(backends, 1))
    wait_settled(balancer, pool_name, 1)
    stream = AdsRaw(balancer.address)
    streams.append(stream)
    stream.request(CLUSTER, [pool_name])
    response = stream.next()
    stream.request(CLUSTER, [pool_name], "a-version-never-sent", response.nonce)
    # A nonce never sent is ignored: no answer, nothing recorded.
    stream.request(CLUSTER, [pool_name], "another-one", "987654")
    assert stream.quiet(0.5)
    (row,) = balancer.server.ads.table.snapshot()
    assert row["acked"] == {CLUSTER: response.version_info}
    assert row["types"][CLUSTER]["acks"] == 1


def test_subscriptions_to_ever_new_combinations_of_pools_cache_bounded_bytes(
    balancer: BalancerHandle,
    streams: list[AdsRaw],
    pool_name: str,
    backends: list[RouteGuideBackend],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(hub_module, "MAX_CACHED_BYTES", 5_000)
    pools = [f"{pool_name}-{i}" for i in range(12)]
    started = start_backends(backends, 2)
    for pool in pools:
        register_all(balancer, pool, started)
    for pool in pools:
        wait_settled(balancer, pool, 2)
    stream = AdsRaw(balancer.address)
    streams.append(stream)
    sizes = []
    for i in range(1, len(pools) + 1):  # a new combination of pools each time
        stream.request(ENDPOINTS, pools[:i])
        sizes.append(len(stream.next().SerializeToString()))
    hub = balancer.server.ads.hub
    assert sum(sizes) > 10_000  # what an unbounded cache would hold
    assert hub._cached_bytes <= 5_000
    assert hub._cached_bytes == sum(len(entry[1]) for entry in hub._responses.values())
