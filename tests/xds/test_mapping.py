"""A pool version as xDS resources: health, drains, ejections (and the
panic guard's rule, shared with grpclb lists), drops, zones, weights and
fallback."""

from __future__ import annotations

from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.core.v3 import health_check_pb2 as hc
from envoy.config.endpoint.v3 import endpoint_pb2

from balancer_server import lists
from balancer_server.xds.resources import CLUSTER, ENDPOINTS, pool_resources
from lookaside_registry.model import Backend, BackendState, DropRate, PoolConfig, PoolSnapshot
from tests.xds.helpers import unpack


def backend(i: int, state: BackendState = BackendState.SERVING, **kw: object) -> Backend:
    return Backend(
        id=f"b{i}", pool="p", host="127.0.0.1", ip="127.0.0.1", port=9000 + i, state=state, **kw
    )  # type: ignore[arg-type]


def snapshot(*backends: Backend, **config: object) -> PoolSnapshot:
    return PoolSnapshot("p", 7, PoolConfig.from_flat("p", **config), tuple(backends))


def decode(framed: bytes, type_url: str) -> object:
    from envoy.service.discovery.v3 import discovery_pb2

    response = discovery_pb2.DiscoveryResponse.FromString(framed)
    return unpack(type_url, response.resources[0])


def cla(snap: PoolSnapshot) -> endpoint_pb2.ClusterLoadAssignment | None:
    resource = pool_resources(snap).get(ENDPOINTS, "missing")
    if resource is None or resource == "missing":
        return resource  # type: ignore[return-value]
    return decode(resource.framed, ENDPOINTS)  # type: ignore[union-attr,return-value]


def endpoints(assignment: endpoint_pb2.ClusterLoadAssignment) -> dict[int, int]:
    """port -> health status."""
    return {
        e.endpoint.address.socket_address.port_value: e.health_status
        for loc in assignment.endpoints
        for e in loc.lb_endpoints
    }


def test_drains_and_failed_health_are_endpoint_health_and_ejections_are_left_out() -> None:
    snap = snapshot(
        backend(0),
        backend(1, BackendState.DRAINING),
        backend(2, BackendState.UNHEALTHY),
        backend(3, BackendState.EJECTED),
        backend(4, BackendState.DISABLED),
    )
    assert endpoints(cla(snap)) == {9000: hc.HEALTHY, 9001: hc.DRAINING, 9002: hc.UNHEALTHY}


def test_panic_mode_lists_the_same_backends_as_grpclb_lists() -> None:
    snap = snapshot(
        backend(0, BackendState.UNHEALTHY),
        backend(1, BackendState.EJECTED),
        backend(2, BackendState.DRAINING),
    )
    # No backend is serving: grpclb lists the faulty ones, and so does xDS, as HEALTHY.
    grpclb_ports = {e.port for e in lists.build_entries(snap, "epoch")}
    healthy = {p for p, s in endpoints(cla(snap)).items() if s == hc.HEALTHY}
    assert healthy == grpclb_ports == {9000, 9001}


def test_no_serving_backend_keeps_the_assignment_and_fallback_has_none() -> None:
    assert cla(snapshot(backend(0, BackendState.DRAINING))) == "missing"
    assert cla(snapshot(backend(0), fallback=True)) is None


def test_drops_are_drop_overloads() -> None:
    snap = snapshot(backend(0), drops=(DropRate("ratelimit", 250), DropRate("off", 0)))
    (drop,) = cla(snap).policy.drop_overloads
    assert drop.category == "ratelimit"
    assert drop.drop_percentage.numerator == 2500
    assert drop.drop_percentage.denominator == drop.drop_percentage.TEN_THOUSAND


def test_zones_are_weighted_localities() -> None:
    snap = snapshot(
        backend(0, zone="a", weight=2), backend(1, zone="a", weight=3), backend(2, zone="b")
    )
    localities = {
        loc.locality.zone: (loc.load_balancing_weight.value, len(loc.lb_endpoints))
        for loc in cla(snap).endpoints
    }
    assert localities == {"a": (5, 2), "b": (1, 1)}


def test_unequal_weights_ask_for_ring_hash_and_equal_ones_for_round_robin() -> None:
    def policy(snap: PoolSnapshot) -> int:
        return decode(pool_resources(snap)[CLUSTER].framed, CLUSTER).lb_policy  # type: ignore[union-attr,attr-defined]

    assert policy(snapshot(backend(0), backend(1))) == cluster_pb2.Cluster.ROUND_ROBIN
    weighted = snapshot(backend(0, weight=1), backend(1, weight=3))
    assert policy(weighted) == cluster_pb2.Cluster.RING_HASH
    weights = {
        e.endpoint.address.socket_address.port_value: e.load_balancing_weight.value
        for e in cla(weighted).endpoints[0].lb_endpoints
    }
    assert weights == {9000: 1, 9001: 3}


def test_equal_content_has_equal_versions() -> None:
    one = pool_resources(snapshot(backend(0), backend(1)))
    two = pool_resources(snapshot(backend(0), backend(1)))
    assert {k: v.version for k, v in one.items() if v} == {
        k: v.version for k, v in two.items() if v
    }
    three = pool_resources(snapshot(backend(0)))
    assert three[ENDPOINTS].version != one[ENDPOINTS].version  # type: ignore[union-attr]
    assert three[CLUSTER].version == one[CLUSTER].version  # type: ignore[union-attr]
