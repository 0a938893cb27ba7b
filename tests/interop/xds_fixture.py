"""A fixed ADS responder for the LRS tests: it serves one pool's four
resources as written here (the Cluster with `lrs_server: self`, so the
stock client reports load to the same server), beside the balancer's own
LoadReportingService over the balancer's own watcher and load sink, on a
server of the test's. It is not the balancer's ADS: it answers each
type's first request (empty nonce) and ignores ACKs, enough for a client
to call a fixed set of backends and report on them."""

from __future__ import annotations

from typing import Any

import grpc
from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.core.v3 import address_pb2, base_pb2, config_source_pb2
from envoy.config.endpoint.v3 import endpoint_components_pb2, endpoint_pb2
from envoy.config.listener.v3 import api_listener_pb2, listener_pb2
from envoy.config.route.v3 import route_components_pb2, route_pb2
from envoy.extensions.filters.http.router.v3 import router_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm,
)
from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2
from envoy.type.v3 import percent_pb2
from google.protobuf import any_pb2, wrappers_pb2

from balancer_server.lrs import LoadReportingService
from tests.support import BalancerHandle

PREFIX = "type.googleapis.com/"
LDS = PREFIX + "envoy.config.listener.v3.Listener"
RDS = PREFIX + "envoy.config.route.v3.RouteConfiguration"
CDS = PREFIX + "envoy.config.cluster.v3.Cluster"
EDS = PREFIX + "envoy.config.endpoint.v3.ClusterLoadAssignment"


def _any(message: Any) -> any_pb2.Any:
    packed = any_pb2.Any()
    packed.Pack(message)
    return packed


def _ads() -> config_source_pb2.ConfigSource:
    return config_source_pb2.ConfigSource(
        ads=config_source_pb2.AggregatedConfigSource(),
        resource_api_version=config_source_pb2.V3,
    )


def resources(pool: str, ports: list[int], drops: dict[str, int]) -> dict[str, any_pb2.Any]:
    """The pool's Listener, RouteConfiguration, Cluster and assignment;
    drops: category -> per mille."""
    manager = hcm.HttpConnectionManager(
        rds=hcm.Rds(config_source=_ads(), route_config_name=pool),
        http_filters=[hcm.HttpFilter(name="router", typed_config=_any(router_pb2.Router()))],
    )
    listener = listener_pb2.Listener(
        name=pool, api_listener=api_listener_pb2.ApiListener(api_listener=_any(manager))
    )
    route = route_pb2.RouteConfiguration(
        name=pool,
        virtual_hosts=[
            route_components_pb2.VirtualHost(
                name=pool,
                domains=["*"],
                routes=[
                    route_components_pb2.Route(
                        match=route_components_pb2.RouteMatch(prefix=""),
                        route=route_components_pb2.RouteAction(cluster=pool),
                    )
                ],
            )
        ],
    )
    cluster = cluster_pb2.Cluster(
        name=pool,
        type=cluster_pb2.Cluster.EDS,
        eds_cluster_config=cluster_pb2.Cluster.EdsClusterConfig(
            eds_config=_ads(), service_name=pool
        ),
        lb_policy=cluster_pb2.Cluster.ROUND_ROBIN,
        lrs_server=config_source_pb2.ConfigSource(self=config_source_pb2.SelfConfigSource()),
    )
    endpoints = [
        endpoint_components_pb2.LbEndpoint(
            endpoint=endpoint_components_pb2.Endpoint(
                address=address_pb2.Address(
                    socket_address=address_pb2.SocketAddress(address="127.0.0.1", port_value=p)
                )
            )
        )
        for p in ports
    ]
    assignment = endpoint_pb2.ClusterLoadAssignment(
        cluster_name=pool,
        endpoints=[
            endpoint_components_pb2.LocalityLbEndpoints(
                locality=base_pb2.Locality(zone="z1"),
                load_balancing_weight=wrappers_pb2.UInt32Value(value=1),
                lb_endpoints=endpoints,
            )
        ],
        policy=endpoint_pb2.ClusterLoadAssignment.Policy(
            drop_overloads=[
                endpoint_pb2.ClusterLoadAssignment.Policy.DropOverload(
                    category=category,
                    drop_percentage=percent_pb2.FractionalPercent(
                        numerator=per_mille * 10,
                        denominator=percent_pb2.FractionalPercent.TEN_THOUSAND,
                    ),
                )
                for category, per_mille in drops.items()
            ]
        ),
    )
    return {
        LDS: _any(listener),
        RDS: _any(route),
        CDS: _any(cluster),
        EDS: _any(assignment),
    }


class FixedAds(ads_pb2_grpc.AggregatedDiscoveryServiceServicer):
    def __init__(self, served: dict[str, any_pb2.Any]) -> None:
        self.served = served
        self.nonces = 0

    async def StreamAggregatedResources(self, request_iterator: Any, context: Any) -> Any:  # noqa: N802
        async for request in request_iterator:
            if request.response_nonce:  # an ACK (or a NACK): nothing changes here
                continue
            found = self.served.get(request.type_url)
            self.nonces += 1
            yield discovery_pb2.DiscoveryResponse(
                version_info="1",
                type_url=request.type_url,
                nonce=str(self.nonces),
                resources=[found] if found is not None else [],
            )


class XdsFixture:
    """ADS (fixed) and the balancer's LRS on a server of the test's, on the
    balancer's loop; TLS with mTLS when `credentials` are given."""

    def __init__(
        self,
        balancer: BalancerHandle,
        served: dict[str, any_pb2.Any],
        credentials: grpc.ServerCredentials | None = None,
    ) -> None:
        self.balancer = balancer
        server = balancer.server
        self.lrs = LoadReportingService(server.watcher.snapshots, server.sink, auth=server.auth)
        self.ads = FixedAds(served)

        async def start() -> tuple[grpc.aio.Server, int]:
            aio = grpc.aio.server()
            ads_pb2_grpc.add_AggregatedDiscoveryServiceServicer_to_server(self.ads, aio)
            aio.add_generic_rpc_handlers((self.lrs.handler(),))
            port = (
                aio.add_secure_port("127.0.0.1:0", credentials)
                if credentials is not None
                else aio.add_insecure_port("127.0.0.1:0")
            )
            await aio.start()
            return aio, port

        self.server, self.port = balancer.run(start())
        self.address = f"127.0.0.1:{self.port}"

    def stop(self) -> None:
        self.balancer.run(self.server.stop(0))
