"""The thin client installs alone: a fresh virtualenv gets `pip install .`
(no extra), which brings grpcio, protobuf and grpcio-health-checking and
none of the server parts, and that client balances calls over a real
balancer's list; a backend registered with the helper, given its server,
serves grpc.health.v1 from that install and is called through the pool. The process
first loads another copy of grpc.lb.v1 into protobuf's default pool, as an
application with its own generated grpclb modules would: the client's
private copy must not clash with it."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import venv
from pathlib import Path

import pytest

from tests.support import BalancerHandle, register_all, start_backends

ROOT = Path(__file__).resolve().parents[2]
SOURCES = [
    "pyproject.toml",
    "README.md",
    "lookaside_proto",
    "lookaside_registry",
    "server_common",
    "balancer_server",
    "admin_api",
    "dns_responder",
    "client_lib",
    "lookaside",
    "protos",
]

SCRIPT = r"""
import importlib.util, json, sys
absent = [m for m in ("fastapi", "redis", "pydantic", "uvicorn", "dnslib") if importlib.util.find_spec(m)]

# Another copy of grpc.lb.v1 in the default pool, under another file name.
from google.protobuf import descriptor_pb2, descriptor_pool, duration_pb2, timestamp_pb2
from google.protobuf.message_factory import GetMessageClass
import client_lib._lb_proto as private
other = descriptor_pb2.FileDescriptorProto.FromString(private.LOAD_BALANCER_FILE)
other.name = "grpc/lb/v1/load_balancer.proto"
other.dependency[:] = ["google/protobuf/duration.proto", "google/protobuf/timestamp.proto"]
descriptor_pool.Default().Add(other)
GetMessageClass(descriptor_pool.Default().FindMessageTypeByName("grpc.lb.v1.LoadBalanceRequest"))

import grpc
from client_lib import LookasideChannel
from lookaside_proto.routeguide.v1 import route_guide_pb2 as rg
from lookaside_proto.routeguide.v1 import route_guide_pb2_grpc as rg_grpc

pool, balancer = sys.argv[1], sys.argv[2]
with LookasideChannel(pool, balancer) as channel:
    channel.wait_for_list(20)
    ready = lambda: sum(s is grpc.ChannelConnectivity.READY for s in channel.backend_states().values())
    import time
    deadline = time.monotonic() + 20
    while ready() < 3 and time.monotonic() < deadline:
        time.sleep(0.02)
    stub = rg_grpc.RouteGuideStub(channel)
    names = [stub.GetFeature(rg.Point(), timeout=5).name for _ in range(30)]

# A backend from the README: a stock server, the helper given that server.
import concurrent.futures
from client_lib import Registration
from grpc_health.v1 import health_pb2, health_pb2_grpc

class Own(rg_grpc.RouteGuideServicer):
    def GetFeature(self, request, context):
        return rg.Feature(name="self-registered")

server = grpc.server(concurrent.futures.ThreadPoolExecutor(max_workers=4))
rg_grpc.add_RouteGuideServicer_to_server(Own(), server)
port = server.add_insecure_port("127.0.0.1:0")
server.start()
with Registration(balancer, pool + "-own", port, server=server, drain_delay=0):
    with grpc.insecure_channel(f"127.0.0.1:{port}") as direct:
        health = health_pb2_grpc.HealthStub(direct).Check(health_pb2.HealthCheckRequest(), timeout=5)
    with LookasideChannel(pool + "-own", balancer) as channel:
        channel.wait_for_list(20)
        own = rg_grpc.RouteGuideStub(channel).GetFeature(rg.Point(), timeout=10).name
print(json.dumps({"present": absent, "names": names, "own": own,
                  "health": health_pb2.HealthCheckResponse.ServingStatus.Name(health.status)}))
"""


@pytest.mark.timeout(900)
def test_client_alone_installs_and_balances(
    balancer: BalancerHandle,
    backends,
    pool_name: str,
    tmp_path: Path,  # type: ignore[no-untyped-def]
) -> None:
    src = tmp_path / "src"
    src.mkdir()
    for name in SOURCES:
        path = ROOT / name
        if path.is_dir():
            shutil.copytree(path, src / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy(path, src / name)
    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=True)
    python = env_dir / "bin" / "python"
    install = subprocess.run(
        [str(python), "-m", "pip", "install", "-q", str(src)],
        capture_output=True,
        text=True,
        timeout=800,
    )
    assert install.returncode == 0, install.stderr[-3000:]
    listed = subprocess.run(
        [str(python), "-m", "pip", "list", "--format=json"], capture_output=True, text=True
    )
    installed = {p["name"].lower() for p in json.loads(listed.stdout)}
    assert {"grpcio", "protobuf", "grpcio-health-checking", "lookaside-grpclb"} <= installed
    assert not installed & {"fastapi", "redis", "uvicorn", "pydantic", "dnslib"}
    # The command needs the server parts and says which extra brings them.
    command = subprocess.run(
        [str(env_dir / "bin" / "lookaside"), "--help"], capture_output=True, text=True
    )
    assert command.returncode != 0
    assert "pip install 'lookaside-grpclb[server]'" in command.stderr

    three = start_backends(backends, 3)
    register_all(balancer, pool_name, three)
    run = subprocess.run(
        [str(python), "-c", SCRIPT, pool_name, balancer.address],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,  # not the source tree: only the installed package is importable
    )
    assert run.returncode == 0, run.stderr[-3000:]
    result = json.loads(run.stdout.strip().splitlines()[-1])
    assert result["present"] == []
    assert sorted(result["names"].count(b.name) for b in three) == [10, 10, 10]
    assert (result["own"], result["health"]) == ("self-registered", "SERVING")
    assert sys.executable != str(python)
