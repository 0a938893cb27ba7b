"""xDS beside grpclb on one balancer: what an ADS stream costs against a
BalanceLoad stream, and how long a registration takes to reach each kind
of client.

    .venv/bin/python bench/xds_vs_grpclb.py [--streams 1000] [--rounds 5] [--clients 2]
        [--shared-pool] [--xds-first]

Starts a private Redis and one balancer process, and two pools with one
backend each (served by this script): one for the grpclb streams and
clients, one for the xDS ones, so that each registration goes to one kind
only and neither kind waits for the other's writes (`--shared-pool`: one
pool for both, as in a fleet half moved; the balancer then serves each
change to the grpclb streams first). `--clients` processes per kind
(`--streams` split among them) open raw BalanceLoad streams (each waits
for its first list), and the balancer's RSS is read; then as many raw ADS
streams (each subscribes to its pool's Listener, RouteConfiguration,
Cluster and ClusterLoadAssignment and ACKs them, as gRPC's client does),
and RSS is read again. Then, `--rounds` times, one more backend registers
through the Registry API in the grpclb pool and then one in the xDS pool
(one registration in the shared pool); the script notes when each raw
stream receives the new list or assignment, and when calls of two real
clients reach the new backend: a thin grpclb client (client_lib) and a
stock grpcio client on `xds:///POOL` (bootstrap in
GRPC_XDS_BOOTSTRAP_CONFIG), each calling in a loop. It prints KiB per
stream of each kind, and per kind the registration-to-stream delay
(p50, p99, max over all streams and rounds) and the registration-to-calls
delay of each real client (p50, max over the rounds). Everything shares
this machine's cores: the raw xDS clients also write an ACK per response,
which is client work a grpclb stream does not have. No assertion. (Not
named xds.py: the script's folder comes first on sys.path, and xds-protos
has a top-level package `xds`.)
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import grpc
import grpc.aio
import psutil
from _lab import BenchLab, RawStreams, percentile

from lookaside_proto.registry.v1 import registry_pb2, registry_pb2_grpc
from lookaside_proto.routeguide.v1 import route_guide_pb2 as rg
from lookaside_proto.routeguide.v1 import route_guide_pb2_grpc as rg_grpc
from lookaside_registry.model import PoolConfig, RegistrationRules

POOL = "xdsbench"
TYPES = (
    "type.googleapis.com/envoy.config.listener.v3.Listener",
    "type.googleapis.com/envoy.config.route.v3.RouteConfiguration",
    "type.googleapis.com/envoy.config.cluster.v3.Cluster",
    "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment",
)
ADS_METHOD = "/envoy.service.discovery.v3.AggregatedDiscoveryService/StreamAggregatedResources"


class RawAds:
    """ADS streams of one grpc.aio client process, as gRPC's client opens
    them: the four types subscribed, each response ACKed."""

    def __init__(self, balancer: str, pool: str, streams: int, per_connection: int) -> None:
        from envoy.service.discovery.v3 import discovery_pb2

        self.pb = discovery_pb2
        self.pool = pool
        self.streams = streams
        self.channels = [
            grpc.aio.insecure_channel(balancer, options=[("grpc.use_local_subchannel_pool", 1)])
            for _ in range(max(1, -(-streams // per_connection)))
        ]
        self.calls: list[grpc.aio.StreamStreamCall] = []
        self.refused = 0

    def _request(self, type_url: str, version: str = "", nonce: str = "", node: str = "") -> bytes:
        request = self.pb.DiscoveryRequest(
            type_url=type_url,
            resource_names=[self.pool],
            version_info=version,
            response_nonce=nonce,
        )
        if node:
            request.node.id = node
        return request.SerializeToString()

    async def read_ack(
        self, call: grpc.aio.StreamStreamCall, arrived: Callable[[], None] | None = None
    ) -> None:
        """Reads a response and ACKs it; `arrived` is called in between."""
        response = self.pb.DiscoveryResponse.FromString(await call.read())
        if arrived is not None:
            arrived()
        await call.write(self._request(response.type_url, response.version_info, response.nonce))

    async def _open(self, i: int) -> grpc.aio.StreamStreamCall | None:
        call = self.channels[i % len(self.channels)].stream_stream(ADS_METHOD)()
        try:
            for n, type_url in enumerate(TYPES):
                await call.write(self._request(type_url, node=f"bench-{i}" if n == 0 else ""))
                await self.read_ack(call)
        except grpc.aio.AioRpcError:
            self.refused += 1
            return None
        return call

    async def open(self) -> float:
        start = time.perf_counter()
        opened = await asyncio.gather(*(self._open(i) for i in range(self.streams)))
        self.calls = [c for c in opened if c is not None]
        return time.perf_counter() - start

    async def close(self) -> None:
        for call in self.calls:
            call.cancel()
        for ch in self.channels:
            await ch.close()


async def _client(
    kind: str, balancer: str, pool: str, streams: int, rounds: int, wait: float
) -> None:
    """One client process: `ready <opened> <refused> <seconds>`, then per
    round `arrivals <json unix times>`."""
    if kind == "grpclb":
        lb = RawStreams(balancer, pool, streams, 100)
        elapsed = await asyncio.wait_for(lb.open(), wait)
        calls, refused = lb.calls, sum(lb.refusals.values())

        async def next_update(call: grpc.aio.StreamStreamCall, arrived: Callable[[], None]) -> None:
            await call.read()
            arrived()
    else:
        ads = RawAds(balancer, pool, streams, 100)
        elapsed = await asyncio.wait_for(ads.open(), wait)
        calls, refused = ads.calls, ads.refused

        async def next_update(call: grpc.aio.StreamStreamCall, arrived: Callable[[], None]) -> None:
            await ads.read_ack(call, arrived)  # the ACK is written after the arrival is noted

    print(f"ready {len(calls)} {refused} {elapsed:.3f}", flush=True)
    for _ in range(rounds):
        arrivals: list[float] = []

        def arrived() -> None:
            arrivals.append(time.time())  # noqa: B023 - called within this iteration

        await asyncio.wait(
            [asyncio.create_task(next_update(c, arrived)) for c in calls], timeout=wait
        )
        print("arrivals " + json.dumps(arrivals), flush=True)
    await (lb.close() if kind == "grpclb" else ads.close())


class Backend(rg_grpc.RouteGuideServicer):
    def __init__(self) -> None:
        self.server = grpc.server(concurrent.futures.ThreadPoolExecutor(max_workers=4))
        rg_grpc.add_RouteGuideServicer_to_server(self, self.server)
        self.port = self.server.add_insecure_port("127.0.0.1:0")
        self.server.start()

    def GetFeature(self, request: rg.Point, context: grpc.ServicerContext) -> rg.Feature:  # noqa: N802
        return rg.Feature(name=str(self.port))


class Caller:
    """Calls in a loop on one channel; notes when a call first reaches a port."""

    def __init__(self, channel: grpc.Channel) -> None:
        self.stub = rg_grpc.RouteGuideStub(channel)
        self.first: dict[str, float] = {}
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self.stop.is_set():
            try:
                name = self.stub.GetFeature(rg.Point(), timeout=5).name
            except grpc.RpcError:
                time.sleep(0.01)
                continue
            self.first.setdefault(name, time.time())
            time.sleep(0.002)

    def reached(self, port: int, timeout: float) -> float | None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if str(port) in self.first:
                return self.first[str(port)]
            time.sleep(0.005)
        return None


def _table(name: str, values: list[float]) -> str:
    ms = [v * 1000 for v in values]
    if not ms:
        return f"    {name:<7} no arrivals"
    return (
        f"    {name:<7} p50 {percentile(ms, 0.5):.0f} ms, p99 {percentile(ms, 0.99):.0f} ms, "
        f"max {max(ms):.0f} ms over {len(ms)} arrivals"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--streams", type=int, default=1000, help="of each kind")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--clients", type=int, default=2, help="client processes per kind")
    parser.add_argument("--wait", type=float, default=120.0)
    parser.add_argument(
        "--shared-pool", action="store_true", help="one pool for both kinds of streams and clients"
    )
    parser.add_argument(
        "--xds-first", action="store_true", help="open the ADS streams before the BalanceLoad ones"
    )
    parser.add_argument(
        "--client", nargs=3, metavar=("KIND", "BALANCER", "POOL"), help=argparse.SUPPRESS
    )
    args = parser.parse_args()
    if args.client:
        kind, balancer_address, pool = args.client
        asyncio.run(_client(kind, balancer_address, pool, args.streams, args.rounds, args.wait))
        return

    pools = (
        {"grpclb": POOL, "xds": POOL}
        if args.shared_pool
        else {"grpclb": f"{POOL}-grpclb", "xds": f"{POOL}-xds"}
    )
    rules = RegistrationRules(address_policy="any", max_lease_ttl_ms=3_600_000)
    configs = {
        pool: PoolConfig.from_flat(
            pool,
            report_interval_ms=0,
            lease_ttl_ms=3_600_000,
            health_checks=False,
            registration=rules,
        )  # fmt: skip
        for pool in set(pools.values())
    }
    limit = ("--max-streams-per-address", str(2 * args.streams + 1000))
    backends = [Backend()]
    with BenchLab(configs, metrics=True, args=limit) as lab:
        registry = registry_pb2_grpc.RegistryStub(grpc.insecure_channel(lab.balancer))

        def register(pool: str, b: Backend) -> None:
            registry.Register(
                registry_pb2.RegisterRequest(pool=pool, host="127.0.0.1", port=b.port), timeout=10
            )

        for pool in set(pools.values()):
            register(pool, backends[0])
        balancer = psutil.Process(lab.procs[0].pid)
        time.sleep(1.0)
        share = [
            args.streams // args.clients + (i < args.streams % args.clients)
            for i in range(args.clients)
        ]

        def clients(kind: str) -> tuple[list[subprocess.Popen[str]], int, float]:
            procs = [
                subprocess.Popen(
                    [
                        sys.executable,
                        str(Path(__file__).resolve()),
                        "--client",
                        kind,
                        lab.balancer,
                        pools[kind],
                        "--streams",
                        str(n),
                        "--rounds",
                        str(args.rounds),
                        "--wait",
                        str(args.wait),
                    ],
                    stdout=subprocess.PIPE,
                    text=True,
                )  # fmt: skip
                for n in share
                if n > 0
            ]
            opened, secs = 0, 0.0
            for proc in procs:
                assert proc.stdout is not None
                _, n, _refused, took = proc.stdout.readline().split()
                opened, secs = opened + int(n), max(secs, float(took))
            return procs, opened, secs

        # RSS growth per kind, each measured as its streams open (the kind
        # opened second may reuse memory the first one's growth left free).
        opened: dict[str, tuple[list[subprocess.Popen[str]], int, float, int]] = {}
        for kind in ("xds", "grpclb") if args.xds_first else ("grpclb", "xds"):
            before = balancer.memory_info().rss
            procs, n, secs = clients(kind)
            time.sleep(1.0)
            opened[kind] = (procs, n, secs, balancer.memory_info().rss - before)

        os.environ["GRPC_XDS_BOOTSTRAP_CONFIG"] = json.dumps(
            {
                "xds_servers": [
                    {"server_uri": lab.balancer, "channel_creds": [{"type": "insecure"}]}
                ],
                "node": {"id": "bench-xds-client"},
            }
        )
        from client_lib import LookasideChannel

        thin = LookasideChannel(pools["grpclb"], lab.balancer)
        xds = grpc.insecure_channel(f"xds:///{pools['xds']}")
        callers = {"grpclb": Caller(thin), "xds": Caller(xds)}
        names = {"grpclb": "grpclb (thin client)", "xds": "xds (stock grpcio)"}
        for caller in callers.values():
            if caller.reached(backends[0].port, 30) is None:
                raise SystemExit("a client never reached the first backend")

        def arrivals(kind: str, t0: float) -> list[float]:
            delays = []
            for proc in opened[kind][0]:
                assert proc.stdout is not None
                line = proc.stdout.readline()
                delays += [t - t0 for t in json.loads(line.removeprefix("arrivals "))]
            return delays

        stream_delays: dict[str, list[float]] = {"grpclb": [], "xds": []}
        call_delays: dict[str, list[float]] = {"grpclb": [], "xds": []}
        # One registration per kind and round (one for both with a shared pool).
        steps = [("grpclb", "xds")] if args.shared_pool else [("grpclb",), ("xds",)]
        for _ in range(args.rounds):
            for kinds in steps:
                time.sleep(1.0)
                backend = Backend()
                backends.append(backend)
                t0 = time.time()
                register(pools[kinds[0]], backend)
                for kind in kinds:
                    stream_delays[kind] += arrivals(kind, t0)
                for kind in kinds:
                    reached = callers[kind].reached(backend.port, args.wait)
                    call_delays[kind].append(float("nan") if reached is None else reached - t0)
        for caller in callers.values():
            caller.stop.set()
            caller.thread.join(10)
        thin.close()
        xds.close()
        for procs, *_ in opened.values():
            for proc in procs:
                proc.wait(30)
        fanouts = lab.metric("lookaside_balancer_fanout_seconds_count", pool=pools["grpclb"])
        fanout = lab.metric("lookaside_balancer_fanout_seconds_sum", pool=pools["grpclb"])
        xds_writes = lab.metric("lookaside_balancer_xds_update_seconds_count", type="eds")
        xds_write = lab.metric("lookaside_balancer_xds_update_seconds_sum", type="eds")
    for b in backends:
        b.server.stop(0)

    order = "xds first" if args.xds_first else "grpclb first"
    where = "one pool for both" if args.shared_pool else "a pool per kind"
    print(
        f"{args.streams} raw streams of each kind on one balancer ({where}), "
        f"{args.clients} client processes per kind, 100 per connection, opened {order}"
    )
    for kind in ("grpclb", "xds"):
        _, n, secs, rss = opened[kind]
        print(
            f"  {kind + ':':<7} opened {n} in {secs:.2f} s, RSS +"
            f"{rss / max(n, 1) / 1024:.1f} KiB per stream"
        )
    print(f"  registration -> the new list/assignment on every stream, {args.rounds} rounds:")
    for kind, delays in stream_delays.items():
        print(_table(kind, delays))
    print(
        "  the balancer's own part: grpclb new list -> last write "
        f"(lookaside_balancer_fanout_seconds) mean {fanout / max(fanouts, 1) * 1000:.0f} ms "
        f"over {fanouts:.0f} updates; xDS change -> write, per stream "
        f"(lookaside_balancer_xds_update_seconds) mean {xds_write / max(xds_writes, 1) * 1000:.0f}"
        f" ms over {xds_writes:.0f} writes"
    )
    print("  registration -> first call on the new backend, per round:")
    for kind, delays in call_delays.items():
        shown = ", ".join(f"{d * 1000:.0f}" for d in delays)
        print(
            f"    {names[kind]:<21} p50 {percentile(delays, 0.5) * 1000:.0f} ms, "
            f"max {max(delays) * 1000:.0f} ms  ({shown} ms)"
        )


if __name__ == "__main__":
    main()
