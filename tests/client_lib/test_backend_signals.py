"""A backend process written as the README shows (a stock grpc server, the
registration helper given that server) stops as a Kubernetes pod does: on
SIGTERM it drains, waits, deregisters and stops its server, then exits 0;
Ctrl-C (SIGINT) does the same with no KeyboardInterrupt traceback. Both the
sync and the asyncio helper."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from lookaside_registry import keys
from tests.support import BalancerHandle, wait_until

ROOT = Path(__file__).resolve().parents[2]
LIFECYCLE = ("registered", "draining", "deregistered", "expired")

SYNC = r"""
import concurrent.futures, sys
import grpc
from client_lib import Registration
from lookaside_proto.routeguide.v1 import route_guide_pb2 as rg
from lookaside_proto.routeguide.v1 import route_guide_pb2_grpc as rg_grpc

class RouteGuide(rg_grpc.RouteGuideServicer):
    def GetFeature(self, request, context):
        return rg.Feature(name="signals")

server = grpc.server(concurrent.futures.ThreadPoolExecutor(max_workers=4))
rg_grpc.add_RouteGuideServicer_to_server(RouteGuide(), server)
port = server.add_insecure_port("127.0.0.1:0")
server.start()
with Registration(sys.argv[1], pool=sys.argv[2], port=port, server=server,
                  drain_delay=1.0, drain_timeout=5) as reg:
    print("registered", reg.backend_id, port, flush=True)
    server.wait_for_termination()
print("exited", flush=True)
"""

AIO = r"""
import asyncio, sys
import grpc
from client_lib import AsyncRegistration
from lookaside_proto.routeguide.v1 import route_guide_pb2 as rg
from lookaside_proto.routeguide.v1 import route_guide_pb2_grpc as rg_grpc

class RouteGuide(rg_grpc.RouteGuideServicer):
    async def GetFeature(self, request, context):
        return rg.Feature(name="signals")

async def main():
    server = grpc.aio.server()
    rg_grpc.add_RouteGuideServicer_to_server(RouteGuide(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    async with AsyncRegistration(sys.argv[1], pool=sys.argv[2], port=port, server=server,
                                 drain_delay=1.0, drain_timeout=5) as reg:
        print("registered", reg.backend_id, port, flush=True)
        await server.wait_for_termination()
    print("exited", flush=True)

asyncio.run(main())
"""


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
@pytest.mark.parametrize("kind", ["sync", "aio"])
def test_backend_drains_deregisters_and_exits_cleanly_on_a_stop_signal(
    balancer: BalancerHandle, pool_name: str, redis_client, kind: str, sig: signal.Signals
) -> None:  # type: ignore[no-untyped-def]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-c", SYNC if kind == "sync" else AIO, balancer.address, pool_name],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        assert proc.stdout is not None
        first = proc.stdout.readline().split()
        assert first[:1] == ["registered"], (first, proc.stderr.read() if proc.stderr else "")
        backend_id = first[1]

        def stored() -> dict | None:  # type: ignore[type-arg]
            raw = redis_client.hget(keys.backends(pool_name), backend_id)
            return json.loads(raw) if raw else None

        wait_until(lambda: (stored() or {}).get("state") == "serving", timeout=20)
        proc.send_signal(sig)
        # It drains, waits, deregisters and ends on its own.
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, err
    assert "exited" in out
    assert "Traceback" not in err and "KeyboardInterrupt" not in err, err
    assert stored() is None
    # Drained (out of the lists, lease kept), then deregistered after the
    # drain_delay of 1 s, never expired.
    events = balancer.run(balancer.store.events(pool_name))[::-1]
    steps = {e["kind"]: e["ts_ms"] for e in events if e["kind"] in LIFECYCLE}
    kinds = [e["kind"] for e in events if e["kind"] in LIFECYCLE]
    assert kinds == ["registered", "draining", "deregistered"], events
    assert steps["deregistered"] - steps["draining"] >= 950, events
