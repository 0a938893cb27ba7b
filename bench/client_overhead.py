"""Thin client vs a plain grpcio channel: calls per second, in one run.

    .venv/bin/python bench/client_overhead.py [--seconds 3] [--rounds 5] [--inflight 64]

Starts a private Redis, a balancer and backends as separate processes, then
alternates timed rounds of unary GetFeature calls:
  plain      grpc.insecure_channel to one backend
  plain+token  the same, sending an lb-token header as any grpclb client does
  thin-1     LookasideChannel over a pool of that one backend
  plain-rr3  round robin by hand over 3 plain channels, one per backend
  thin-3     LookasideChannel over a pool of 3 backends
sequential and with 64 calls in flight (sync futures), and the same two
loads on grpc.aio (client_lib.aio). The thin channels track every
backend's connectivity (as they always do) and pick among READY ones.
Prints the median calls/s per mode, the ratio to plain, and the cost the
thin client adds per call (1/rate - 1/plain rate, in microseconds). No
assertion: the numbers go to docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import grpc

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from client_lib import LookasideChannel  # noqa: E402
from client_lib.aio import LookasideAioChannel  # noqa: E402
from lookaside.redis_process import RedisProcess, free_port  # noqa: E402
from lookaside_proto.registry.v1 import registry_pb2 as pb  # noqa: E402
from lookaside_proto.registry.v1 import registry_pb2_grpc as pb_grpc  # noqa: E402
from lookaside_proto.routeguide.v1 import route_guide_pb2 as rg  # noqa: E402
from lookaside_proto.routeguide.v1 import route_guide_pb2_grpc as rg_grpc  # noqa: E402

HERE = Path(__file__).resolve().parent


def spawn(args: list[str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, *args], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL
    )


def wait_ready(address: str) -> None:
    ch = grpc.insecure_channel(address)
    grpc.channel_ready_future(ch).result(timeout=20)
    ch.close()


Block = Callable[[], int]  # runs one block of calls and returns how many
SEQUENTIAL_BLOCK = 100  # calls in a block of the sequential loads
BATCHES_PER_BLOCK = 2  # batches of INFLIGHT calls in a block of the others


def sequential(stubs: list[rg_grpc.RouteGuideStub]) -> Block:
    point = rg.Point(latitude=1)
    turn = itertools.cycle(stubs)

    def block() -> int:
        for _ in range(SEQUENTIAL_BLOCK):
            next(turn).GetFeature(point)
        return SEQUENTIAL_BLOCK

    return block


INFLIGHT = 64


def concurrent(stubs: list[rg_grpc.RouteGuideStub]) -> Block:
    point = rg.Point(latitude=1)
    turn = itertools.cycle(stubs)

    def block() -> int:
        for _ in range(BATCHES_PER_BLOCK):
            futures = [next(turn).GetFeature.future(point) for _ in range(INFLIGHT)]
            for f in futures:
                f.result()
        return INFLIGHT * BATCHES_PER_BLOCK

    return block


Cycle = dict[str, float]  # calls/s of each mode's block in one turn of all modes


def interleaved(blocks: dict[str, Block], seconds: float) -> list[Cycle]:
    """The modes take turns block by block for about `seconds`; the order
    rotates each turn, so no mode always follows the same one."""
    order = list(blocks)
    cycles: list[Cycle] = []
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        cycle: Cycle = {}
        for mode in order:
            start = time.perf_counter()
            n = blocks[mode]()
            cycle[mode] = n / (time.perf_counter() - start)
        cycles.append(cycle)
        order.append(order.pop(0))
    return cycles


TOKEN = (("lb-token", "0123456789ab.1cxrnexvm"),)


class _WithToken:
    """A multi-callable that sends an lb-token, as every grpclb client does."""

    def __init__(self, mc: grpc.UnaryUnaryMultiCallable) -> None:
        self.mc = mc

    def __call__(self, request: rg.Point) -> rg.Feature:
        return self.mc(request, metadata=TOKEN)

    def future(self, request: rg.Point) -> grpc.Future:
        return self.mc.future(request, metadata=TOKEN)


class TokenStub:
    def __init__(self, channel: grpc.Channel) -> None:
        self.GetFeature = _WithToken(rg_grpc.RouteGuideStub(channel).GetFeature)  # noqa: N815


# grpc.aio binds to one event loop per process: every aio round runs on this one.
AIO_LOOP = asyncio.new_event_loop()


def aio_rates(
    makers: dict[str, Callable[[], grpc.aio.Channel]], seconds: float, inflight: int
) -> list[Cycle]:
    """interleaved() on grpc.aio: one call at a time (inflight 1) or in
    batches. Each block runs the loop until it is done; between blocks the
    loop rests, for every mode alike."""
    point = rg.Point(latitude=1)

    async def open_all() -> dict[str, tuple[grpc.aio.Channel, rg_grpc.RouteGuideStub]]:
        opened = {}
        for mode, make in makers.items():
            channel = make()
            if hasattr(channel, "channel_ready"):
                await channel.channel_ready()
            stub = rg_grpc.RouteGuideStub(channel)
            for _ in range(50):
                await stub.GetFeature(point)
            opened[mode] = (channel, stub)
        return opened

    async def block(stub: rg_grpc.RouteGuideStub) -> int:
        if inflight == 1:
            for _ in range(SEQUENTIAL_BLOCK):
                await stub.GetFeature(point)
            return SEQUENTIAL_BLOCK
        for _ in range(BATCHES_PER_BLOCK):
            await asyncio.gather(*(stub.GetFeature(point) for _ in range(inflight)))
        return inflight * BATCHES_PER_BLOCK

    def blocking(stub: rg_grpc.RouteGuideStub) -> Block:
        return lambda: AIO_LOOP.run_until_complete(block(stub))

    opened = AIO_LOOP.run_until_complete(open_all())
    try:
        return interleaved({mode: blocking(stub) for mode, (_, stub) in opened.items()}, seconds)
    finally:
        for channel, _ in opened.values():
            AIO_LOOP.run_until_complete(channel.close())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--inflight", type=int, default=INFLIGHT)
    args = parser.parse_args()
    globals()["INFLIGHT"] = args.inflight
    many = f"{args.inflight} in flight"

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
                        "--insecure-registration",
                        # One process, as these figures have always been
                        # taken: the client's cost is what is measured.
                        "--workers",
                        "1",
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
            plain3 = [grpc.insecure_channel(f"127.0.0.1:{p}") for p in ports]
            thin1 = LookasideChannel("one", lb)
            thin3 = LookasideChannel("three", lb)
            assert thin1.wait_for_list(10) and thin3.wait_for_list(10)
            while (
                sum(s is grpc.ChannelConnectivity.READY for s in thin3.backend_states().values())
                < 3
            ):
                time.sleep(0.05)
            # plain-rr3 is a hand-rolled round robin over three plain channels:
            # what one channel per backend costs in grpcio itself.
            modes: dict[str, list[rg_grpc.RouteGuideStub]] = {
                "plain": [rg_grpc.RouteGuideStub(plain)],
                "plain+token": [TokenStub(plain)],  # type: ignore[list-item]
                "thin-1": [rg_grpc.RouteGuideStub(thin1)],
                "plain-rr3": [rg_grpc.RouteGuideStub(c) for c in plain3],
                "thin-3": [rg_grpc.RouteGuideStub(thin3)],
            }
            for stubs in modes.values():  # warm up connections
                warm = sequential(stubs)
                for _ in range(5):
                    warm()
            loads: dict[str, Callable[[list[rg_grpc.RouteGuideStub]], Block]] = {
                "sequential": sequential,
                many: concurrent,
            }
            aio_modes: dict[str, Callable[[], grpc.aio.Channel]] = {
                "plain": lambda: grpc.aio.insecure_channel(f"127.0.0.1:{ports[0]}"),
                "thin-1": lambda: LookasideAioChannel("one", lb),
                "thin-3": lambda: LookasideAioChannel("three", lb),
            }
            # rates[(load, mode)]: calls/s of each block; ratios: to the plain
            # block of the same turn
            rates: dict[tuple[str, str], list[float]] = {}
            ratios: dict[tuple[str, str], list[float]] = {}

            def record(load_name: str, cycles: list[Cycle]) -> None:
                for cycle in cycles:
                    for mode, rate in cycle.items():
                        rates.setdefault((load_name, mode), []).append(rate)
                        ratios.setdefault((load_name, mode), []).append(rate / cycle["plain"])

            for _ in range(args.rounds):
                for load_name, load in loads.items():
                    blocks = {mode: load(stubs) for mode, stubs in modes.items()}
                    record(load_name, interleaved(blocks, args.seconds * len(blocks)))
                for aio_load, inflight in (("aio sequential", 1), (f"aio {many}", args.inflight)):
                    record(aio_load, aio_rates(aio_modes, args.seconds * len(aio_modes), inflight))
            turns = len(ratios[("sequential", "plain")])
            print(
                f"{args.rounds} rounds of {args.seconds:g}s per mode, the modes taking turns "
                f"({turns} turns of sync sequential); median calls/s of a block (median ratio "
                "to the plain block of the same turn, added microseconds per call)"
            )
            for load_name in [*loads, "aio sequential", f"aio {many}"]:
                base = statistics.median(rates[(load_name, "plain")])
                cells = []
                for mode in modes:
                    if (load_name, mode) not in rates:
                        continue
                    med = statistics.median(rates[(load_name, mode)])
                    ratio = statistics.median(ratios[(load_name, mode)])
                    added = (1 / med - 1 / base) * 1e6
                    cells.append(f"{mode} {med:,.0f} ({ratio:.3f}x, {added:+.0f} us)")
                print(f"  {load_name:18s} " + "   ".join(cells))
            for c in plain3:
                c.close()
            thin1.close()
            thin3.close()
            plain.close()
            reg_channel.close()
        finally:
            for proc in procs:
                proc.terminate()
            for proc in procs:
                proc.wait(10)


if __name__ == "__main__":
    main()
