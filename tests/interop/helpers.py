"""Helpers for the stock-client tests: routeguide backends that can come
back on the same port, registration through the API, single calls."""

from __future__ import annotations

import concurrent.futures
from collections.abc import Callable

import grpc
from google.protobuf.duration_pb2 import Duration

from lookaside_proto.registry.v1 import registry_pb2, registry_pb2_grpc
from lookaside_proto.routeguide.v1 import route_guide_pb2 as rg
from lookaside_proto.routeguide.v1 import route_guide_pb2_grpc as rg_grpc
from tests.dns_responder.dns_handle import DnsHandle
from tests.support import BalancerHandle, RouteGuideBackend, wait_until

GRPCLB_CONFIG = '{"loadBalancingConfig":[{"grpclb":{}}]}'


class Backend(RouteGuideBackend):
    """A RouteGuideBackend that can be started on a given port, so a test
    can stop it and bring it back at the same address."""

    def start_on(self, port: int) -> Backend:
        self.server = grpc.server(concurrent.futures.ThreadPoolExecutor(max_workers=8))
        rg_grpc.add_RouteGuideServicer_to_server(self, self.server)
        self.port = self.server.add_insecure_port(f"127.0.0.1:{port}")
        if self.port == 0:
            raise OSError(f"cannot listen on 127.0.0.1:{port}")
        self.server.start()
        return self

    def start(self) -> Backend:
        return self.start_on(0)

    def reset(self) -> None:
        with self.lock:
            self.calls = 0
            self.tokens.clear()


def register(balancer: BalancerHandle, pool: str, backend: RouteGuideBackend) -> str:
    """Registers a backend through the registration API; returns its id."""
    with grpc.insecure_channel(balancer.address) as channel:
        response = registry_pb2_grpc.RegistryStub(channel).Register(
            registry_pb2.RegisterRequest(
                pool=pool,
                host="127.0.0.1",
                port=backend.port,
                lease_ttl=Duration(seconds=600),
            ),
            timeout=10,
        )
    return response.backend_id


def get_feature(stub: rg_grpc.RouteGuideStub) -> tuple[grpc.StatusCode, str]:
    """One call; (OK, backend name) or (error code, details)."""
    try:
        feature = stub.GetFeature(rg.Point(latitude=1, longitude=2), timeout=5)
    except grpc.RpcError as err:
        return err.code(), err.details() or ""
    return grpc.StatusCode.OK, feature.name


def calls_until(
    stub: rg_grpc.RouteGuideStub, predicate: Callable[[], bool], timeout: float
) -> None:
    """Makes calls until the predicate holds (each call may fail meanwhile)."""

    def step() -> bool:
        get_feature(stub)
        return predicate()

    wait_until(step, timeout=timeout, interval=0.01)


def wait_dns_caught_up(dns: DnsHandle, pool: str) -> None:
    """Waits until the responder answers from the pool's current version in Redis."""

    def caught_up() -> bool:
        snap = dns.responder.watcher.get(pool)
        current = dns.run(dns.store.versions([pool]))[pool]
        return snap is not None and snap.version == current

    wait_until(caught_up, timeout=10)
