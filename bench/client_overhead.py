"""Thin client vs a plain grpcio channel: calls per second, in one run.

    .venv/bin/python bench/client_overhead.py [--seconds 3] [--rounds 5]

Starts a private Redis, a balancer and backends as separate processes, then
alternates timed rounds of unary GetFeature calls:
  plain     grpc.insecure_channel to one backend
  thin-1    LookasideChannel over a pool of that one backend
  thin-3    LookasideChannel over a pool of 3 backends
each sequential and with 16 calls in flight (futures). Prints the median
calls/s per mode and the ratios to plain. No assertion: the numbers go to
docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import grpc

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from client_lib import LookasideChannel  # noqa: E402
from lookaside.proto.registry.v1 import registry_pb2 as pb  # noqa: E402
from lookaside.proto.registry.v1 import registry_pb2_grpc as pb_grpc  # noqa: E402
from lookaside.proto.routeguide.v1 import route_guide_pb2 as rg  # noqa: E402
from lookaside.proto.routeguide.v1 import route_guide_pb2_grpc as rg_grpc  # noqa: E402
from lookaside.redis_process import RedisProcess, free_port  # noqa: E402

HERE = Path(__file__).resolve().parent


def spawn(args: list[str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, *args], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL
    )


def wait_ready(address: str) -> None:
    ch = grpc.insecure_channel(address)
    grpc.channel_ready_future(ch).result(timeout=20)
    ch.close()


def sequential(stub: rg_grpc.RouteGuideStub, seconds: float) -> float:
    n = 0
    point = rg.Point(latitude=1)
    end = time.perf_counter() + seconds
    start = time.perf_counter()
    while time.perf_counter() < end:
        for _ in range(100):
            stub.GetFeature(point)
        n += 100
    return n / (time.perf_counter() - start)


def concurrent(stub: rg_grpc.RouteGuideStub, seconds: float, inflight: int = 16) -> float:
    point = rg.Point(latitude=1)
    n = 0
    end = time.perf_counter() + seconds
    start = time.perf_counter()
    while time.perf_counter() < end:
        futures = [stub.GetFeature.future(point) for _ in range(inflight)]
        for f in futures:
            f.result()
        n += inflight
    return n / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()

    procs: list[subprocess.Popen[bytes]] = []
    with RedisProcess() as redis:
        try:
            lb_port = free_port()
            procs.append(
                spawn(
                    [
                        "-m",
                        "lookaside",
                        "balancer",
                        "--listen",
                        f"127.0.0.1:{lb_port}",
                        "--redis-url",
                        redis.url,
                        "--metrics-listen",
                        "",
                        "--log-level",
                        "warning",
                    ]
                )
            )
            ports = [free_port() for _ in range(3)]
            for p in ports:
                procs.append(spawn([str(HERE / "_backend.py"), str(p)]))
            lb = f"127.0.0.1:{lb_port}"
            for address in [lb, *(f"127.0.0.1:{p}" for p in ports)]:
                wait_ready(address)
            reg_channel = grpc.insecure_channel(lb)
            registry = pb_grpc.RegistryStub(reg_channel)
            registry.Register(pb.RegisterRequest(pool="one", host="127.0.0.1", port=ports[0]))
            for p in ports:
                registry.Register(pb.RegisterRequest(pool="three", host="127.0.0.1", port=p))

            plain = grpc.insecure_channel(f"127.0.0.1:{ports[0]}")
            thin1 = LookasideChannel("one", lb)
            thin3 = LookasideChannel("three", lb)
            assert thin1.wait_for_list(10) and thin3.wait_for_list(10)
            while len(thin3.backends()) < 3:
                time.sleep(0.05)
            modes: dict[str, grpc.Channel] = {"plain": plain, "thin-1": thin1, "thin-3": thin3}
            stubs = {k: rg_grpc.RouteGuideStub(v) for k, v in modes.items()}
            for stub in stubs.values():  # warm up connections
                sequential(stub, 0.5)
            loads: dict[str, Callable[[rg_grpc.RouteGuideStub, float], float]] = {
                "sequential": sequential,
                "16 in flight": concurrent,
            }
            results: dict[tuple[str, str], list[float]] = {}
            for _ in range(args.rounds):
                for load_name, load in loads.items():
                    for mode, stub in stubs.items():
                        results.setdefault((load_name, mode), []).append(load(stub, args.seconds))
            print(f"{args.rounds} rounds x {args.seconds:g}s, median calls/s (ratio to plain)")
            for load_name in loads:
                base = statistics.median(results[(load_name, "plain")])
                cells = []
                for mode in modes:
                    med = statistics.median(results[(load_name, mode)])
                    cells.append(f"{mode} {med:,.0f} ({med / base:.3f}x)")
                print(f"  {load_name:13s} " + "   ".join(cells))
            thin1.close()
            thin3.close()
            plain.close()
            reg_channel.close()
        finally:
            for p in procs:
                p.terminate()
            for p in procs:
                p.wait(10)


if __name__ == "__main__":
    main()
