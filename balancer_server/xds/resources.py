"""A pool as the four xDS resources a gRPC client on `xds:///POOL` needs.

Each resource is named after the pool: the Listener (an API listener whose
HttpConnectionManager takes its routes over ADS and runs the router
filter), the RouteConfiguration that sends every call to the pool's
Cluster, the Cluster (endpoints over ADS) and the ClusterLoadAssignment of
the pool's backends.

What the assignment says, from the same rules as grpclb lists:

- the backends that take calls are `lists.serving_set` (the panic guard's
  rule included: in panic mode the unhealthy and ejected ones are listed
  rather than none) and are HEALTHY;
- a drained backend is listed DRAINING and a failed one UNHEALTHY (the
  client leaves both out); an ejected or disabled one is left out;
- drop rates are `policy.drop_overloads` (category = the drop's token);
- zones are localities, weighted by the sum of their serving backends'
  weights;
- endpoint weights are `load_balancing_weight`. gRPC's ROUND_ROBIN ignores
  them and RING_HASH follows them (a random hash per call when no hash
  policy is set), so a pool whose serving backends differ in weight (or a
  least_loaded pool) is offered RING_HASH in its Cluster, and any other
  ROUND_ROBIN (exact rotation);
- TLS backends (the balancer's --backend-tls-ca, the same setting its
  health checks dial them with; balancer_server.tls) make every Cluster
  carry an UpstreamTlsContext: the CA from the client's certificate
  provider instance BACKEND_CA, the client certificate from BACKEND_CERT
  when the backends require mTLS (--backend-tls-cert), and the name the
  certificates must carry (--backend-tls-server-name, `{pool}` the pool's
  name) as an exact SAN match. The client defines both instances in its
  bootstrap (`lookaside xds-bootstrap --backend-ca/--backend-cert`) and
  makes its channel with xDS credentials; a client without them refuses
  the Cluster (unknown instance name);
- a pool in fallback has no assignment, and neither has a pool with no
  backend that takes calls: clients keep the assignment they have, as
  grpclb clients keep their list.

Every resource is serialized once per content, already framed as the
`resources` field of a DiscoveryResponse, so a response to any stream is a
concatenation of shared bytes.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.core.v3 import address_pb2, base_pb2, config_source_pb2, health_check_pb2
from envoy.config.endpoint.v3 import endpoint_components_pb2, endpoint_pb2
from envoy.config.listener.v3 import api_listener_pb2, listener_pb2
from envoy.config.route.v3 import route_components_pb2, route_pb2
from envoy.extensions.filters.http.router.v3 import router_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm_pb2,
)
from envoy.extensions.transport_sockets.tls.v3 import common_pb2, tls_pb2
from envoy.type.matcher.v3 import string_pb2
from envoy.type.v3 import percent_pb2
from google.protobuf import any_pb2, wrappers_pb2

from balancer_server import lists
from balancer_server.tls import BackendTls
from lookaside_registry.model import Backend, BackendState, PoolSnapshot

LISTENER = "type.googleapis.com/envoy.config.listener.v3.Listener"
ROUTE = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration"
CLUSTER = "type.googleapis.com/envoy.config.cluster.v3.Cluster"
ENDPOINTS = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment"
# The order a client subscribes in, and the order streams write in.
TYPES = (LISTENER, ROUTE, CLUSTER, ENDPOINTS)
SHORT = {LISTENER: "lds", ROUTE: "rds", CLUSTER: "cds", ENDPOINTS: "eds"}

UPSTREAM_TLS = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext"
# Certificate provider instances a client's bootstrap defines for TLS
# backends: the CA that signed the backends' certificates, and the client
# certificate for backends that require mTLS.
BACKEND_CA = "lookaside-backend-ca"
BACKEND_CERT = "lookaside-backend-cert"

ROUTER_FILTER = "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
HCM = "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"

# A hook for tests: called with (type_url, message) before a resource is
# serialized; it may change the message (to make a client refuse it).
Mutator = Callable[[str, Any], None]


@dataclass(frozen=True, slots=True)
class Resource:
    """One serialized resource: its version (a digest of its bytes, so
    equal content has equal versions on every replica and after restarts)
    and its bytes framed as DiscoveryResponse field 2."""

    version: str
    framed: bytes


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte = n & 0x7F
        n >>= 7
        if n:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def field_bytes(number: int, data: bytes) -> bytes:
    """A length-delimited protobuf field."""
    return _varint((number << 3) | 2) + _varint(len(data)) + data


def _pack(type_url: str, message: Any) -> Resource:
    value = any_pb2.Any(type_url=type_url, value=message.SerializeToString()).SerializeToString()
    version = hashlib.blake2b(value, digest_size=6).hexdigest()
    return Resource(version, field_bytes(2, value))


def _ads() -> config_source_pb2.ConfigSource:
    return config_source_pb2.ConfigSource(
        ads=config_source_pb2.AggregatedConfigSource(),
        resource_api_version=config_source_pb2.V3,
    )


def listener(name: str) -> listener_pb2.Listener:
    router = any_pb2.Any(type_url=ROUTER_FILTER, value=router_pb2.Router().SerializeToString())
    manager = hcm_pb2.HttpConnectionManager(
        rds=hcm_pb2.Rds(config_source=_ads(), route_config_name=name),
        http_filters=[hcm_pb2.HttpFilter(name="envoy.filters.http.router", typed_config=router)],
    )
    return listener_pb2.Listener(
        name=name,
        api_listener=api_listener_pb2.ApiListener(
            api_listener=any_pb2.Any(type_url=HCM, value=manager.SerializeToString())
        ),
    )


def route(name: str) -> route_pb2.RouteConfiguration:
    return route_pb2.RouteConfiguration(
        name=name,
        virtual_hosts=[
            route_components_pb2.VirtualHost(
                name=name,
                domains=["*"],
                routes=[
                    route_components_pb2.Route(
                        match=route_components_pb2.RouteMatch(prefix=""),
                        route=route_components_pb2.RouteAction(cluster=name),
                    )
                ],
            )
        ],
    )


def weighted(weights: list[int]) -> bool:
    """Whether endpoint weights matter: then the Cluster asks for RING_HASH."""
    return len(set(weights)) > 1


def upstream_tls(pool: str, tls: BackendTls) -> base_pb2.TransportSocket:
    """The Cluster's transport socket for TLS backends."""
    validation = common_pb2.CertificateValidationContext(
        ca_certificate_provider_instance=common_pb2.CertificateProviderPluginInstance(
            instance_name=BACKEND_CA
        )
    )
    name = tls.server_name_for(pool)
    if name:
        validation.match_subject_alt_names.append(string_pb2.StringMatcher(exact=name))
    common = tls_pb2.CommonTlsContext(validation_context=validation)
    if tls.client_certificate:
        common.tls_certificate_provider_instance.instance_name = BACKEND_CERT
    context = tls_pb2.UpstreamTlsContext(common_tls_context=common)
    return base_pb2.TransportSocket(
        name="envoy.transport_sockets.tls",
        typed_config=any_pb2.Any(type_url=UPSTREAM_TLS, value=context.SerializeToString()),
    )


def cluster(name: str, ring_hash: bool, tls: BackendTls | None = None) -> cluster_pb2.Cluster:
    transport = upstream_tls(name, tls) if tls is not None and tls.credentials else None
    return cluster_pb2.Cluster(
        name=name,
        type=cluster_pb2.Cluster.EDS,
        eds_cluster_config=cluster_pb2.Cluster.EdsClusterConfig(
            eds_config=_ads(), service_name=name
        ),
        lb_policy=cluster_pb2.Cluster.RING_HASH if ring_hash else cluster_pb2.Cluster.ROUND_ROBIN,
        # Load reports (LRS) go to the server that sent this Cluster: this balancer.
        lrs_server=config_source_pb2.ConfigSource(self=config_source_pb2.SelfConfigSource()),
        transport_socket=transport,
    )


def _endpoint(b: Backend, status: int, weight: int) -> endpoint_components_pb2.LbEndpoint:
    return endpoint_components_pb2.LbEndpoint(
        endpoint=endpoint_components_pb2.Endpoint(
            address=address_pb2.Address(
                socket_address=address_pb2.SocketAddress(address=b.ip, port_value=b.port)
            )
        ),
        health_status=status,
        load_balancing_weight=wrappers_pb2.UInt32Value(value=max(1, weight)),
    )


def assignment(
    snapshot: PoolSnapshot, serving: tuple[Backend, ...], weights: list[int]
) -> endpoint_pb2.ClusterLoadAssignment:
    """The pool's endpoints by zone, given its serving set and their weights."""
    listed: list[tuple[Backend, int, int]] = []
    chosen = {b.id for b in serving}
    for b, w in zip(serving, weights, strict=True):
        listed.append((b, health_check_pb2.HEALTHY, w))
    for b in snapshot.backends:
        if b.id in chosen:
            continue
        if b.state is BackendState.DRAINING:
            listed.append((b, health_check_pb2.DRAINING, b.weight))
        elif b.state is BackendState.UNHEALTHY:
            listed.append((b, health_check_pb2.UNHEALTHY, b.weight))
        # EJECTED (outside panic mode) and DISABLED: left out.
    zones: dict[str, list[tuple[Backend, int, int]]] = {}
    for item in listed:
        zones.setdefault(item[0].zone, []).append(item)
    localities = []
    for zone in sorted(zones):
        members = zones[zone]
        healthy = sum(w for _, s, w in members if s == health_check_pb2.HEALTHY)
        localities.append(
            endpoint_components_pb2.LocalityLbEndpoints(
                locality=base_pb2.Locality(zone=zone),
                # A locality without a weight is dropped by gRPC's client.
                load_balancing_weight=wrappers_pb2.UInt32Value(value=max(1, healthy)),
                lb_endpoints=[_endpoint(b, s, w) for b, s, w in members],
            )
        )
    drops = [
        endpoint_pb2.ClusterLoadAssignment.Policy.DropOverload(
            category=d.token,
            drop_percentage=percent_pb2.FractionalPercent(
                numerator=d.per_mille * 10,
                denominator=percent_pb2.FractionalPercent.TEN_THOUSAND,
            ),
        )
        for d in snapshot.config.drops
        if d.per_mille > 0
    ]
    return endpoint_pb2.ClusterLoadAssignment(
        cluster_name=snapshot.name,
        endpoints=localities,
        policy=endpoint_pb2.ClusterLoadAssignment.Policy(drop_overloads=drops),
    )


def pool_resources(
    snapshot: PoolSnapshot, mutate: Mutator | None = None, tls: BackendTls | None = None
) -> dict[str, Resource | None]:
    """The pool's resources by type URL. The assignment is None for a pool
    in fallback (there is none), and missing when no backend takes calls
    (the caller keeps the one it has, as grpclb clients keep their list).
    `tls`: how the balancer dials the backends (TLS ones get a transport
    socket in the Cluster)."""
    name = snapshot.name
    serving = lists.serving_set(snapshot)
    weights = lists.serving_weights(snapshot, serving) if serving else []
    messages: dict[str, Any] = {
        LISTENER: listener(name),
        ROUTE: route(name),
        CLUSTER: cluster(name, weighted(weights), tls),
    }
    if serving and not snapshot.config.fallback:
        messages[ENDPOINTS] = assignment(snapshot, serving, weights)
    out: dict[str, Resource | None] = {}
    if snapshot.config.fallback:
        out[ENDPOINTS] = None
    for type_url, message in messages.items():
        if mutate is not None:
            mutate(type_url, message)
        out[type_url] = _pack(type_url, message)
    return out
