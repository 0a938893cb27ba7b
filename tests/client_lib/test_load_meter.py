"""LoadMeter counts the application's calls, not grpc.health.v1 probes."""

from __future__ import annotations

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from lookaside.demo.server import RouteGuideServer
from lookaside.demo.settings import ServerSettings
from lookaside_proto.routeguide.v1 import route_guide_pb2 as rg
from lookaside_proto.routeguide.v1 import route_guide_pb2_grpc as rg_grpc
from tests.support import LoopThread


def test_health_probes_are_not_load() -> None:
    loop = LoopThread()
    server = RouteGuideServer(ServerSettings(listen="127.0.0.1:0", grace=0.0))
    port = loop.run(server.start())
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    try:
        health = health_pb2_grpc.HealthStub(channel)
        watch = health.Watch(health_pb2.HealthCheckRequest(service=""))
        # The first Watch answer proves the stream is open on the server.
        assert next(watch).status == health_pb2.HealthCheckResponse.SERVING
        for _ in range(5):
            reply = health.Check(health_pb2.HealthCheckRequest(service=""), timeout=5)
            assert reply.status == health_pb2.HealthCheckResponse.SERVING
        idle = server.meter.snapshot()
        assert server.meter.total == 0
        assert idle["in_flight"] == 0 and idle["qps"] == 0
        assert idle["utilization"] == -1.0  # unknown, shown as "—"

        stub = rg_grpc.RouteGuideStub(channel)
        stub.GetFeature(rg.Point(latitude=409146138, longitude=-746188906), timeout=5)
        busy = server.meter.snapshot()
        assert server.meter.total == 1
        assert busy["qps"] > 0 and busy["latency_ms"] > 0
        watch.cancel()
    finally:
        channel.close()
        loop.run(server.stop(0))
        loop.close()
