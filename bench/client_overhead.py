"""Thin client vs a plain grpcio channel: calls per second, in one run.

    .venv/bin/python bench/client_overhead.py [--seconds 3] [--rounds 5] [--inflight 64]

Starts a private Redis, a balancer and backends as separate processes, then
alternates timed rounds of unary GetFeature calls:
  plain      grpc.insecure_channel to one backend
  plain+token  the same, sending an lb-token header as any grpclb client does
  thin-1     LookasideChannel over a pool of that one backend
  grpclb-1   a stock grpcio channel with the grpclb policy over that pool,
             finding the balancer through the DNS responder (SRV records)
  plain-rr3  round robin by hand over 3 plain channels, one per backend
  rr-3       a stock grpcio channel with the round_robin policy over the
             3 backends (an ipv4: target)
  thin-3     LookasideChannel over a pool of 3 backends
  grpclb-3   stock grpclb over that pool
sequential and with 64 calls in flight (sync futures), and the same two
loads on grpc.aio (client_lib.aio; no plain+token there).
The thin channels track every backend's connectivity (as they always do)
and pick among READY ones. Prints the median calls/s per mode, the median
ratio to the plain block of the same turn with its spread over the turns
(the 25th-75th percentile), and the cost added per call (1/rate - 1/plain
rate, in microseconds). No assertion: the numbers go to docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import itertools
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeAlias

import grpc
from google.protobuf.duration_pb2 import Duration

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
LOADS = ["sequential", "inflight", "aio-sequential", "aio-inflight"]


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


# Each mode's block in one turn of all modes: its calls/s and the CPU time
# this process spent per call (every thread: grpc's own included), in us.
Cycle = dict[str, tuple[float, float]]


def interleaved(blocks: dict[str, Block], seconds: float) -> list[Cycle]:
    """The modes take turns block by block for about `seconds`; the order
    rotates each turn, so no mode always follows the same one."""
    order = list(blocks)
    cycles: list[Cycle] = []
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        cycle: Cycle = {}
        for mode in order:
            cpu = time.process_time()
            start = time.perf_counter()
            n = blocks[mode]()
            elapsed = time.perf_counter() - start
            cycle[mode] = (n / elapsed, (time.process_time() - cpu) / n * 1e6)
        cycles.append(cycle)
        order.append(order.pop(0))
    return cycles


TOKEN = (("lb-token", "0123456789ab.1cxrnexvm"),)


class _WithToken:
    """A multi-callable that sends an lb-token, as every grpclb client does."""

    def __init__(self, mc: grpc.UnaryUnaryMultiCallable) -> None:
        self.mc = mc

    def __call__(self, request: rg.Point, timeout: float | None = None) -> rg.Feature:
        return self.mc(request, timeout=timeout, metadata=TOKEN)

    def future(self, request: rg.Point) -> grpc.Future:
        return self.mc.future(request, metadata=TOKEN)


class TokenStub:
    def __init__(self, channel: grpc.Channel) -> None:
        self.GetFeature = _WithToken(rg_grpc.RouteGuideStub(channel).GetFeature)  # noqa: N815


# grpc.aio binds to one event loop per process: every aio round runs on this one.
AIO_LOOP = asyncio.new_event_loop()


class _Rotating:
    """plain-rr3 on grpc.aio: each call on the next of several stubs."""

    def __init__(self, stubs: list[rg_grpc.RouteGuideStub]) -> None:
        self.turn = itertools.cycle(stubs)

    def GetFeature(self, request: rg.Point, **kw: Any) -> Any:  # noqa: N802
        return next(self.turn).GetFeature(request, **kw)


AioChannels: TypeAlias = grpc.aio.Channel | list[grpc.aio.Channel]


def aio_rates(
    makers: dict[str, tuple[int, Callable[[], AioChannels]]], seconds: float, inflight: int
) -> list[Cycle]:
    """interleaved() on grpc.aio: one call at a time (inflight 1) or in
    batches. Each block runs the loop until it is done; between blocks the
    loop rests, for every mode alike. makers: each mode's number of backends
    and how to open its channel (or channels, taken in turn)."""
    point = rg.Point(latitude=1)

    async def open_all() -> dict[str, tuple[list[grpc.aio.Channel], rg_grpc.RouteGuideStub]]:
        opened = {}
        for mode, (backends, make) in makers.items():
            made = make()
            channels = made if isinstance(made, list) else [made]
            for channel in channels:
                if hasattr(channel, "channel_ready"):
                    await channel.channel_ready()
            stub: Any = (
                _Rotating([rg_grpc.RouteGuideStub(c) for c in channels])
                if len(channels) > 1
                else rg_grpc.RouteGuideStub(channels[0])
            )
            seen: set[str] = set()
            deadline = time.monotonic() + 30
            while len(seen) < backends and time.monotonic() < deadline:
                seen.add((await stub.GetFeature(point, timeout=10)).name)
            if len(seen) < backends:
                raise SystemExit(f"{mode}: only {sorted(seen)} answered within 30s")
            for _ in range(50):
                await stub.GetFeature(point)
            opened[mode] = (channels, stub)
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
        for channels, _ in opened.values():
            for channel in channels:
                AIO_LOOP.run_until_complete(channel.close())


ZONE = "lookaside.test"
# Stock grpcio's grpclb finds the balancer in the SRV records of the DNS
# responder; round_robin takes the backends from an ipv4: target.
GRPCLB_OPTIONS = [
    ("grpc.service_config", '{"loadBalancingConfig":[{"grpclb":{}}]}'),
    ("grpc.dns_enable_srv_queries", 1),
    ("grpc.grpclb_fallback_timeout_ms", 30_000),
]
ROUND_ROBIN_OPTIONS = [("grpc.service_config", '{"loadBalancingConfig":[{"round_robin":{}}]}')]


def reaches_all(
    mode: str, call: Callable[[], rg.Feature], backends: int, timeout: float = 30.0
) -> None:
    """Calls until the answers have come from `backends` backends (every
    backend names itself), so that a balanced channel is warm on all."""
    seen: set[str] = set()
    deadline = time.monotonic() + timeout
    while len(seen) < backends:
        if time.monotonic() > deadline:
            raise SystemExit(f"{mode}: only {sorted(seen)} answered within {timeout:g}s")
        seen.add(call().name)


def one_call(turn: Iterator[rg_grpc.RouteGuideStub], point: rg.Point) -> rg.Feature:
    return next(turn).GetFeature(point, timeout=10)


def summary(values: list[float]) -> tuple[float, float, float]:
    """The median and the 25th and 75th percentiles."""
    if len(values) < 2:
        return values[0], values[0], values[0]
    q = statistics.quantiles(values, n=4, method="inclusive")
    return q[1], q[0], q[2]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--inflight", type=int, default=INFLIGHT)
    parser.add_argument(
        "--no-stock",
        action="store_true",
        help="leave out the stock grpclb and round_robin channels",
    )
    parser.add_argument(
        "--loads",
        default=",".join(LOADS),
        help=f"comma-separated loads to run, of {','.join(LOADS)} (default: all)",
    )
    parser.add_argument(
        "--modes",
        default="",
        help="comma-separated modes to run besides plain, e.g. thin-3,rr-3 (default: all)",
    )
    args = parser.parse_args()
    globals()["INFLIGHT"] = args.inflight
    many = f"{args.inflight} in flight"
    wanted_loads = set(args.loads.split(","))
    if wanted_loads - set(LOADS):
        parser.error(f"--loads: unknown {sorted(wanted_loads - set(LOADS))}; known {LOADS}")
    wanted_modes = {"plain", *args.modes.split(",")} if args.modes else None

    procs: list[subprocess.Popen[bytes]] = []
    with RedisProcess() as redis:
        try:
            lb_port, dns_port = free_port(), free_port()
            lb = f"127.0.0.1:{lb_port}"
            procs.append(
                spawn(
                    [
                        "-m",
                        "lookaside",
                        "balancer",
                        "--listen",
                        lb,
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
            if not args.no_stock:
                procs.append(
                    spawn(
                        [
                            "-m",
                            "lookaside",
                            "dns",
                            "--listen",
                            f"127.0.0.1:{dns_port}",
                            "--redis-url",
                            redis.url,
                            "--zone",
                            ZONE,
                            "--balancers",
                            lb,
                            "--resync-interval",
                            "0.2",
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
            for address in [lb, *(f"127.0.0.1:{p}" for p in ports)]:
                wait_ready(address)
            reg_channel = grpc.insecure_channel(lb)
            registry = pb_grpc.RegistryStub(reg_channel)
            # Leases long enough for the run: nothing here sends heartbeats.
            lease = Duration(seconds=600)
            registry.Register(
                pb.RegisterRequest(pool="one", host="127.0.0.1", port=ports[0], lease_ttl=lease)
            )
            for p in ports:
                registry.Register(
                    pb.RegisterRequest(pool="three", host="127.0.0.1", port=p, lease_ttl=lease)
                )

            def grpclb_target(pool: str) -> str:
                return f"dns://127.0.0.1:{dns_port}/{pool}.{ZONE}:{ports[0]}"

            rr_target = "ipv4:" + ",".join(f"127.0.0.1:{p}" for p in ports)
            point = rg.Point(latitude=1)

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
            stock: list[grpc.Channel] = []
            if not args.no_stock:
                stock = [
                    grpc.insecure_channel(grpclb_target("one"), options=GRPCLB_OPTIONS),
                    grpc.insecure_channel(rr_target, options=ROUND_ROBIN_OPTIONS),
                    grpc.insecure_channel(grpclb_target("three"), options=GRPCLB_OPTIONS),
                ]
                for name, channel in zip(("grpclb-1", "rr-3", "grpclb-3"), stock, strict=True):
                    modes[name] = [rg_grpc.RouteGuideStub(channel)]
            if wanted_modes is not None:
                modes = {m: stubs for m, stubs in modes.items() if m in wanted_modes}
            for name, stubs in modes.items():  # warm up connections, on every backend
                n = 1 if name in ("plain", "plain+token") or name.endswith("-1") else 3
                reaches_all(name, functools.partial(one_call, itertools.cycle(stubs), point), n)
                warm = sequential(stubs)
                for _ in range(5):
                    warm()
            loads: dict[str, Callable[[list[rg_grpc.RouteGuideStub]], Block]] = {}
            if "sequential" in wanted_loads:
                loads["sequential"] = sequential
            if "inflight" in wanted_loads:
                loads[many] = concurrent
            aio_loads = [
                (name, inflight)
                for key, name, inflight in (
                    ("aio-sequential", "aio sequential", 1),
                    ("aio-inflight", f"aio {many}", args.inflight),
                )
                if key in wanted_loads
            ]
            aio_modes: dict[str, tuple[int, Callable[[], AioChannels]]] = {
                "plain": (1, lambda: grpc.aio.insecure_channel(f"127.0.0.1:{ports[0]}")),
                "thin-1": (1, lambda: LookasideAioChannel("one", lb)),
                "plain-rr3": (
                    3,
                    lambda: [grpc.aio.insecure_channel(f"127.0.0.1:{p}") for p in ports],
                ),
                "thin-3": (3, lambda: LookasideAioChannel("three", lb)),
            }
            if not args.no_stock:
                aio_modes["grpclb-1"] = (
                    1,
                    lambda: grpc.aio.insecure_channel(grpclb_target("one"), options=GRPCLB_OPTIONS),
                )
                aio_modes["rr-3"] = (
                    3,
                    lambda: grpc.aio.insecure_channel(rr_target, options=ROUND_ROBIN_OPTIONS),
                )
                aio_modes["grpclb-3"] = (
                    3,
                    lambda: grpc.aio.insecure_channel(
                        grpclb_target("three"), options=GRPCLB_OPTIONS
                    ),
                )
            if wanted_modes is not None:
                aio_modes = {m: make for m, make in aio_modes.items() if m in wanted_modes}
            # rates[(load, mode)]: calls/s of each block; ratios: to the plain
            # block of the same turn; by_round: the median ratio of each round
            rates: dict[tuple[str, str], list[float]] = {}
            ratios: dict[tuple[str, str], list[float]] = {}
            by_round: dict[tuple[str, str], list[float]] = {}
            cpu: dict[tuple[str, str], list[float]] = {}

            def record(load_name: str, cycles: list[Cycle]) -> None:
                this_round: dict[str, list[float]] = {}
                for cycle in cycles:
                    for mode, (rate, us) in cycle.items():
                        rates.setdefault((load_name, mode), []).append(rate)
                        cpu.setdefault((load_name, mode), []).append(us)
                        ratio = rate / cycle["plain"][0]
                        ratios.setdefault((load_name, mode), []).append(ratio)
                        this_round.setdefault(mode, []).append(ratio)
                for mode, values in this_round.items():
                    by_round.setdefault((load_name, mode), []).append(statistics.median(values))

            for _ in range(args.rounds):
                for load_name, load in loads.items():
                    blocks = {mode: load(stubs) for mode, stubs in modes.items()}
                    record(load_name, interleaved(blocks, args.seconds * len(blocks)))
                for aio_load, inflight in aio_loads:
                    record(aio_load, aio_rates(aio_modes, args.seconds * len(aio_modes), inflight))
            all_loads = [*loads, *(name for name, _ in aio_loads)]
            turns = len(ratios[(all_loads[0], "plain")])
            print(
                f"{args.rounds} rounds of {args.seconds:g}s per mode, the modes taking turns "
                f"({turns} turns of {all_loads[0]}); median calls/s of a block (median ratio "
                "to the plain block of the same turn, added microseconds per call)"
            )
            order = [*modes, *(m for m in aio_modes if m not in modes)]
            for load_name in all_loads:
                base = statistics.median(rates[(load_name, "plain")])
                cells = []
                for mode in order:
                    if (load_name, mode) not in rates:
                        continue
                    med = statistics.median(rates[(load_name, mode)])
                    ratio = statistics.median(ratios[(load_name, mode)])
                    added = (1 / med - 1 / base) * 1e6
                    cells.append(f"{mode} {med:,.0f} ({ratio:.3f}x, {added:+.0f} us)")
                print(f"  {load_name:18s} " + "   ".join(cells))
            print(
                "ratio to plain: the median over all turns [25th-75th percentile of the turns] "
                "(lowest-highest median of a round)"
            )
            for load_name in all_loads:
                cells = []
                for mode in order:
                    if mode == "plain" or (load_name, mode) not in ratios:
                        continue
                    med, q1, q3 = summary(ratios[(load_name, mode)])
                    rounds = by_round[(load_name, mode)]
                    cells.append(
                        f"{mode} {med:.3f}x [{q1:.2f}-{q3:.2f}] ({min(rounds):.2f}-{max(rounds):.2f})"
                    )
                print(f"  {load_name:18s} " + "   ".join(cells))
            print(
                "CPU time of this process per call, all its threads (median of the blocks, us); "
                "less sensitive than calls/s to other work on the machine"
            )
            for load_name in all_loads:
                cells = [
                    f"{mode} {statistics.median(cpu[(load_name, mode)]):.0f}"
                    for mode in order
                    if (load_name, mode) in cpu
                ]
                print(f"  {load_name:18s} " + "   ".join(cells))
            for c in [*plain3, *stock]:
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
