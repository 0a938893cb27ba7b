"""A minimal routeguide backend for benchmarks: GetFeature answers at once,
and grpc.health.v1 says SERVING (the balancer probes every backend, and
lists one that fails its probes only under its panic guard).

python bench/_backend.py PORT
"""

from __future__ import annotations

import asyncio
import sys

import grpc
from grpc_health.v1 import health, health_pb2_grpc

from lookaside_proto.routeguide.v1 import route_guide_pb2 as rg
from lookaside_proto.routeguide.v1 import route_guide_pb2_grpc as rg_grpc


class Fast(rg_grpc.RouteGuideServicer):
    def __init__(self, name: str) -> None:
        self.name = name

    async def GetFeature(self, request, context):  # type: ignore[no-untyped-def]  # noqa: N802
        return rg.Feature(name=self.name, location=request)


async def main(port: int) -> None:
    server = grpc.aio.server()
    rg_grpc.add_RouteGuideServicer_to_server(Fast(f"127.0.0.1:{port}"), server)
    health_pb2_grpc.add_HealthServicer_to_server(health.aio.HealthServicer(), server)
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    print("ready", flush=True)
    await server.wait_for_termination()


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1])))
