"""The ADS protocol as the balancer speaks it, on raw streams from a stock
grpcio stub against a real balancer and Redis: versions and nonces per
type, ACKs not answered, NACKs logged, counted and recorded, a
resubscription answered at once, names of no pool left out, wildcards
and bad names refused with a clear error."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import grpc
import pytest

from balancer_server.xds import metrics as xds_metrics
from balancer_server.xds.resources import CLUSTER, ENDPOINTS, LISTENER, ROUTE
from tests.support import BalancerHandle, RouteGuideBackend, register_all, start_backends
from tests.xds.helpers import AdsRaw, unpack, wait_settled


@pytest.fixture
def ads(balancer: BalancerHandle) -> Iterator[list[AdsRaw]]:
    opened: list[AdsRaw] = []
    yield opened
    for stream in opened:
        stream.close()


def open_stream(balancer: BalancerHandle, ads: list[AdsRaw], node: str = "raw-node") -> AdsRaw:
    stream = AdsRaw(balancer.address, node)
    ads.append(stream)
    return stream


def subscribe_all(stream: AdsRaw, pool: str) -> dict[str, object]:
    """Subscribes to the pool's four resources, ACKing each; the responses by type."""
    out = {}
    for type_url in (LISTENER, ROUTE, CLUSTER, ENDPOINTS):
        stream.request(type_url, [pool])
        response = stream.next()
        assert response.type_url == type_url
        assert response.version_info and response.nonce
        stream.ack(response, [pool])
        out[type_url] = response
    return out


def nack_count(kind: str) -> float:
    return xds_metrics.XDS_NACKS.labels(kind)._value.get()


def test_resources_acks_not_answered_and_a_change_sent_once(
    balancer: BalancerHandle, ads: list[AdsRaw], pool_name: str, backends: list[RouteGuideBackend]
) -> None:
    register_all(balancer, pool_name, start_backends(backends, 3))
    wait_settled(balancer, pool_name, 3)
    stream = open_stream(balancer, ads)
    got = subscribe_all(stream, pool_name)
    listener = unpack(LISTENER, got[LISTENER].resources[0])
    assert listener.name == pool_name and listener.api_listener.api_listener.type_url.endswith(
        "HttpConnectionManager"
    )
    assert unpack(ROUTE, got[ROUTE].resources[0]).virtual_hosts[0].routes[0].route.cluster == (
        pool_name
    )
    assert unpack(CLUSTER, got[CLUSTER].resources[0]).eds_cluster_config.service_name == pool_name
    cla = unpack(ENDPOINTS, got[ENDPOINTS].resources[0])
    ports = sorted(
        e.endpoint.address.socket_address.port_value for e in cla.endpoints[0].lb_endpoints
    )
    assert ports == sorted(b.port for b in backends)
    # Every ACK went unanswered: no ping-pong.
    assert stream.quiet(1.0)
    table = {s["node_id"]: s for s in balancer.server.xds_streams.snapshot()}
    assert table["raw-node"]["acked"] == {t: r.version_info for t, r in got.items()}
    # A registration: one EDS response (the other types did not change), then quiet after its ACK.
    timed = xds_metrics.XDS_UPDATE_SECONDS.labels("eds")._sum.get()
    register_all(balancer, pool_name, start_backends(backends, 1))
    update = stream.next()
    assert update.type_url == ENDPOINTS
    assert update.version_info != got[ENDPOINTS].version_info
    assert update.nonce != got[ENDPOINTS].nonce
    assert len(unpack(ENDPOINTS, update.resources[0]).endpoints[0].lb_endpoints) == 4
    stream.ack(update, [pool_name])
    assert stream.quiet(1.0)
    # The update's way through the balancer was timed.
    assert xds_metrics.XDS_UPDATE_SECONDS.labels("eds")._sum.get() > timed


def test_a_nack_is_logged_counted_recorded_and_not_answered(
    balancer: BalancerHandle,
    ads: list[AdsRaw],
    pool_name: str,
    backends: list[RouteGuideBackend],
    caplog: pytest.LogCaptureFixture,
) -> None:
    register_all(balancer, pool_name, start_backends(backends, 2))
    wait_settled(balancer, pool_name, 2)
    stream = open_stream(balancer, ads, "nacking-node")
    stream.request(ENDPOINTS, [pool_name])
    first = stream.next()
    stream.ack(first, [pool_name])
    register_all(balancer, pool_name, start_backends(backends, 1))
    second = stream.next()
    before = nack_count("eds")
    with caplog.at_level(logging.WARNING, logger="lookaside.balancer.xds"):
        # The client refuses the second: it names its nonce and keeps the first version.
        stream.request(
            ENDPOINTS, [pool_name], first.version_info, second.nonce, error="weight must be > 0"
        )
        assert stream.quiet(1.0)
    assert nack_count("eds") == before + 1
    assert any(
        "weight must be > 0" in r.getMessage() and second.version_info in r.getMessage()
        for r in caplog.records
    ), [r.getMessage() for r in caplog.records]
    (entry,) = [s for s in balancer.server.xds_streams.snapshot() if s["node_id"] == "nacking-node"]
    assert entry["nacked"][ENDPOINTS] == {
        "version": second.version_info,
        "error": "weight must be > 0",
    }
    assert entry["acked"][ENDPOINTS] == first.version_info
    # The next change is sent as usual.
    register_all(balancer, pool_name, start_backends(backends, 1))
    third = stream.next()
    assert len(unpack(ENDPOINTS, third.resources[0]).endpoints[0].lb_endpoints) == 4


def test_resubscription_gets_the_current_state_at_once(
    balancer: BalancerHandle, ads: list[AdsRaw], pool_name: str, backends: list[RouteGuideBackend]
) -> None:
    register_all(balancer, pool_name, start_backends(backends, 2))
    wait_settled(balancer, pool_name, 2)
    stream = open_stream(balancer, ads)
    got = subscribe_all(stream, pool_name)
    stream.close()
    # A reconnecting client names the versions it holds, with no nonce:
    # it is answered at once, even though nothing changed.
    again = open_stream(balancer, ads)
    for type_url, response in got.items():
        again.request(type_url, [pool_name], version=response.version_info)  # type: ignore[attr-defined]
        answer = again.next(timeout=5)
        assert answer.type_url == type_url
        assert answer.version_info == response.version_info  # type: ignore[attr-defined]
        assert len(answer.resources) == 1


def test_names_of_no_pool_are_left_out_until_the_pool_appears(
    balancer: BalancerHandle, ads: list[AdsRaw], pool_name: str, backends: list[RouteGuideBackend]
) -> None:
    register_all(balancer, pool_name, start_backends(backends, 1))
    wait_settled(balancer, pool_name, 1)
    later = f"{pool_name}-later"
    stream = open_stream(balancer, ads)
    stream.request(LISTENER, [pool_name, later])
    response = stream.next()
    assert [unpack(LISTENER, r).name for r in response.resources] == [pool_name]
    stream.ack(response, [pool_name, later])
    assert stream.quiet(0.5)
    register_all(balancer, later, start_backends(backends, 1))
    response = stream.next()
    assert sorted(unpack(LISTENER, r).name for r in response.resources) == sorted(
        [pool_name, later]
    )


@pytest.mark.parametrize(
    ("type_url", "names", "reason", "message"),
    [
        (LISTENER, ["*"], "wildcard", "wildcard subscriptions are not served"),
        (CLUSTER, [], "wildcard", "wildcard subscriptions are not served"),
        (LISTENER, ["x" * 256], "long_name", "at most 255 are allowed"),
        (ENDPOINTS, ["no/such pool"], "malformed_name", "is not a pool name"),
        (LISTENER, [f"p{i}" for i in range(101)], "too_many_names", "at most 100 are allowed"),
        ("type.googleapis.com/envoy.api.v2.Listener", ["p"], "unknown_type", "is not served"),
    ],
)
def test_bad_subscriptions_get_a_clear_error(
    balancer: BalancerHandle,
    ads: list[AdsRaw],
    type_url: str,
    names: list[str],
    reason: str,
    message: str,
) -> None:
    before = xds_metrics.XDS_REFUSED.labels(reason)._value.get()
    stream = open_stream(balancer, ads)
    stream.request(type_url, names)
    with pytest.raises(grpc.RpcError) as caught:
        stream.next()
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert message in caught.value.details()
    assert xds_metrics.XDS_REFUSED.labels(reason)._value.get() == before + 1


def test_replicas_give_equal_versions_for_equal_content(
    redis_url: str,
    balancer: BalancerHandle,
    ads: list[AdsRaw],
    pool_name: str,
    backends: list[RouteGuideBackend],
) -> None:
    """A client that moves to another replica (or to a restarted one)
    names versions that replica also gives to the same resources."""
    register_all(balancer, pool_name, start_backends(backends, 2))
    other = BalancerHandle(redis_url)
    try:
        versions = []
        for replica in (balancer, other):
            wait_settled(replica, pool_name, 2)
            stream = open_stream(replica, ads)
            versions.append(
                {t: r.version_info for t, r in subscribe_all(stream, pool_name).items()}
            )  # type: ignore[attr-defined]
        assert versions[0] == versions[1]
    finally:
        other.stop()


def test_a_deleted_pool_leaves_the_listener_and_cluster_responses(
    balancer: BalancerHandle, ads: list[AdsRaw], pool_name: str, backends: list[RouteGuideBackend]
) -> None:
    register_all(balancer, pool_name, start_backends(backends, 1))
    wait_settled(balancer, pool_name, 1)
    stream = open_stream(balancer, ads)
    subscribe_all(stream, pool_name)
    balancer.run(balancer.store.delete_pool(pool_name, actor="test"))
    emptied = {}
    while len(emptied) < 2:
        response = stream.next()
        stream.ack(response, [pool_name])
        if response.type_url in (LISTENER, CLUSTER):
            emptied[response.type_url] = len(response.resources)
    assert emptied == {LISTENER: 0, CLUSTER: 0}


def test_a_pool_in_fallback_has_no_assignment(
    balancer: BalancerHandle, ads: list[AdsRaw], pool_name: str, backends: list[RouteGuideBackend]
) -> None:
    from lookaside_registry.model import PoolConfig

    balancer.run(balancer.store.put_pool(PoolConfig(pool_name, fallback=True)))
    register_all(balancer, pool_name, start_backends(backends, 1))
    wait_settled(balancer, pool_name, 1)
    stream = open_stream(balancer, ads)
    stream.request(CLUSTER, [pool_name])
    assert len(stream.next().resources) == 1
    stream.request(ENDPOINTS, [pool_name])
    assert len(stream.next().resources) == 0
