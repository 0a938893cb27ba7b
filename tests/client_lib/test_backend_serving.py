"""A backend that is only a stock grpc server plus the registration helper
(the README's snippet) is health-checked SERVING by the balancer and gets
calls; draining reports NOT_SERVING; stop() deregisters and stops the server.
The balancer checks health on a short interval here, so a backend without
grpc.health.v1 would be unhealthy (Check UNIMPLEMENTED) within a second."""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
from collections.abc import Iterator

import grpc
import grpc.aio
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from client_lib import AsyncRegistration, LookasideChannel, Registration
from lookaside_proto.routeguide.v1 import route_guide_pb2 as rg
from lookaside_proto.routeguide.v1 import route_guide_pb2_grpc as rg_grpc
from lookaside_registry import keys
from lookaside_registry.model import PoolConfig
from tests.support import BalancerHandle, LoopThread, RouteGuideBackend, wait_until

FAST = dict(
    health_interval_ms=100, health_timeout_ms=500, unhealthy_threshold=2, healthy_threshold=2
)


@pytest.fixture
def checked(redis_url: str, pool_name: str) -> Iterator[BalancerHandle]:
    handle = BalancerHandle(redis_url, health_checks=True, replica_id="solo")
    handle.run(handle.store.put_pool(PoolConfig.from_flat(pool_name, **FAST)))
    yield handle
    handle.stop()


def backend_states(redis_client, pool: str) -> dict[int, dict]:  # type: ignore[no-untyped-def]
    return {json.loads(v)["port"]: json.loads(v) for v in redis_client.hvals(keys.backends(pool))}


def health_of(port: int) -> int:
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        reply = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(), timeout=5
        )
    return reply.status


CHECK = "/grpc.health.v1.Health/Check"


class CountChecks(grpc.ServerInterceptor):
    """Counts the balancer's health probes as the backend receives them."""

    def __init__(self) -> None:
        self.checks = 0

    def intercept_service(self, continuation, details):  # type: ignore[no-untyped-def]
        self.checks += details.method == CHECK
        return continuation(details)


class AioCountChecks(grpc.aio.ServerInterceptor):
    def __init__(self) -> None:
        self.checks = 0

    async def intercept_service(self, continuation, details):  # type: ignore[no-untyped-def]
        self.checks += details.method == CHECK
        return await continuation(details)


def plain_server(name: str, probes: CountChecks) -> tuple[grpc.Server, RouteGuideBackend, int]:
    """A routeguide server with nothing else on it: no health service."""
    service = RouteGuideBackend(name)
    server = grpc.server(
        concurrent.futures.ThreadPoolExecutor(max_workers=8), interceptors=[probes]
    )
    rg_grpc.add_RouteGuideServicer_to_server(service, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    return server, service, port


def test_sync_helper_serves_health_so_the_backend_stays_listed_and_gets_calls(
    checked: BalancerHandle, pool_name: str, redis_client
) -> None:  # type: ignore[no-untyped-def]
    probes = CountChecks()
    server, service, port = plain_server("plain-sync", probes)
    reg = Registration(
        checked.address, pool_name, port, server=server, drain_delay=0.2, drain_timeout=2
    )
    try:
        reg.start()
        assert health_of(port) == health_pb2.HealthCheckResponse.SERVING
        # Probed every 100 ms: without health it would be unhealthy after two.
        wait_until(lambda: probes.checks >= 5, timeout=20)
        assert backend_states(redis_client, pool_name)[port]["state"] == "serving"
        with LookasideChannel(pool_name, checked.address) as channel:
            stub = rg_grpc.RouteGuideStub(channel)
            names = {stub.GetFeature(rg.Point(), timeout=5).name for _ in range(5)}
        assert names == {"plain-sync"}
        reg.drain()
        assert health_of(port) == health_pb2.HealthCheckResponse.NOT_SERVING
    finally:
        reg.stop()
    wait_until(lambda: port not in backend_states(redis_client, pool_name))
    # The helper stopped the server it was given.
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        with pytest.raises(grpc.RpcError) as failed:
            rg_grpc.RouteGuideStub(channel).GetFeature(rg.Point(), timeout=2)
    assert failed.value.code() is grpc.StatusCode.UNAVAILABLE


def test_aio_helper_serves_health_so_the_backend_stays_listed_and_gets_calls(
    checked: BalancerHandle, pool_name: str, redis_client
) -> None:  # type: ignore[no-untyped-def]
    loop = LoopThread("aio-backend")
    service = RouteGuideBackend("plain-aio")
    probes = AioCountChecks()

    class Aio(rg_grpc.RouteGuideServicer):
        async def GetFeature(self, request, context):  # type: ignore[no-untyped-def]  # noqa: N802
            return rg.Feature(name=service.name, location=request)

    async def up() -> tuple[grpc.aio.Server, int, AsyncRegistration]:
        server = grpc.aio.server(interceptors=[probes])
        rg_grpc.add_RouteGuideServicer_to_server(Aio(), server)
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        reg = AsyncRegistration(
            checked.address, pool_name, port, server=server, drain_delay=0.2, drain_timeout=2
        )
        await reg.start()
        return server, port, reg

    try:
        server, port, reg = loop.run(up())
        assert health_of(port) == health_pb2.HealthCheckResponse.SERVING
        wait_until(lambda: probes.checks >= 5, timeout=20)
        assert backend_states(redis_client, pool_name)[port]["state"] == "serving"
        with LookasideChannel(pool_name, checked.address) as channel:
            stub = rg_grpc.RouteGuideStub(channel)
            assert stub.GetFeature(rg.Point(), timeout=5).name == "plain-aio"
        loop.run(reg.drain())
        assert health_of(port) == health_pb2.HealthCheckResponse.NOT_SERVING
        loop.run(reg.stop())
        wait_until(lambda: port not in backend_states(redis_client, pool_name))
        # The helper stopped the server it was given.
        loop.run(asyncio.wait_for(server.wait_for_termination(), 5))
    finally:
        loop.close()


def test_without_grpcio_health_checking_server_is_refused_with_the_reason() -> None:
    """An environment without grpcio-health-checking (installed before it
    joined the client install) gets one clear error for server=, and the
    thin client itself still imports."""
    import subprocess
    import sys
    from pathlib import Path

    script = (
        "import sys; sys.modules['grpc_health'] = None\n"
        "import grpc, concurrent.futures\n"
        "from client_lib import LookasideChannel, Registration\n"
        "server = grpc.server(concurrent.futures.ThreadPoolExecutor(max_workers=1))\n"
        "try:\n"
        "    Registration('127.0.0.1:1', 'p', 1, server=server)\n"
        "except RuntimeError as exc:\n"
        "    print(exc)\n"
    )
    root = Path(__file__).resolve().parents[2]
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, cwd=root
    )
    assert done.returncode == 0, done.stderr
    assert "server= needs grpcio-health-checking" in done.stdout
    assert "pip install grpcio-health-checking" in done.stdout
