"""Deterministic subsetting: connections per backend, and the bytes one
backend's departure sends, with and without `subset_size`.

    .venv/bin/python bench/subsetting.py [--backends 200] [--streams 1000]
        [--subset-size 20] [--model-backends 1000] [--model-clients 10000]

Two parts:

1. The assignment (balancer_server.subsets, no network), at the issue's
   scale by default (1,000 backends, 10,000 clients, subset size 20):
   connections per backend (min, max, worst deviation from the mean) with
   subsetting, with each client hashing its own k backends independently
   (rendezvous top-k; a uniform random k-subset per client) and without
   subsetting; then the clients one departure and one arrival move, and
   the bytes of the lists that departure sends (each list serialized as the
   balancer does: lists.pool_payload).
2. A real balancer process (private Redis) with a pool of `--backends`
   registered backends and `--streams` raw BalanceLoad streams from this
   process, once with `subset_size` 0 and once with `--subset-size`: the
   connections per backend the streams' lists make, the bytes of all first
   lists, then one backend deregisters and the script counts the streams
   that get a new list and the bytes they receive.

Clients and balancer share this machine's cores; the byte and connection
counts do not depend on that, the times do. No assertion: the figures go
to docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import random
import statistics
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Hashable

import grpc
import grpc.aio
from _lab import BenchLab

from balancer_server import lists
from balancer_server.subsets import SubsetTable
from lookaside_proto.lb.v1 import load_balancer_pb2 as lb
from lookaside_registry.model import Backend, PoolConfig, PoolSnapshot
from lookaside_registry.store import RegistryStore

POOL = "subsets"
METHOD = "/grpc.lb.v1.LoadBalancer/BalanceLoad"


def spread(counts: list[int]) -> str:
    mean = statistics.mean(counts)
    worst = max(abs(c - mean) for c in counts) / mean * 100 if mean else 0.0
    return f"min {min(counts):,}, max {max(counts):,}, mean {mean:,.1f}, worst {worst:.1f}% off the mean"


def model(backends: int, clients: int, size: int) -> None:
    ids = [f"{i:012x}" for i in range(backends)]
    print(f"assignment: {backends:,} backends, {clients:,} clients, subset size {size}")
    t0 = time.perf_counter()
    table = SubsetTable(size)
    table.set_backends(ids)
    for c in range(clients):
        table.join(c)
    took = time.perf_counter() - t0
    print(f"  subsetting           {spread(list(table.loads().values()))}")
    rng = random.Random(1)
    hashed: Counter[int] = Counter()
    for _ in range(clients):
        hashed.update(rng.sample(range(backends), size))
    print(f"  hashing per client   {spread([hashed[i] for i in range(backends)])}")
    print(f"  no subsetting        every backend {clients:,} connections")
    print(f"  ({took * 1000:.0f} ms to seat the clients, {took / clients * 1e6:.0f} us each)")

    everyone: list[Hashable] = list(range(clients))
    before = {c: table.subset(c) for c in everyone}
    gone = ids[backends // 2]
    table.set_backends(b for b in ids if b != gone)
    moved = [c for c in everyone if table.subset(c) != before[c]]
    members = Counter(len(set(before[c]) - set(table.subset(c))) for c in moved)
    print(
        f"  one backend leaves: {len(moved):,} clients get a new subset "
        f"(members replaced per client: {dict(members)}); {spread(list(table.loads().values()))}"
    )
    snapshot = PoolSnapshot(
        POOL,
        2,
        PoolConfig(name=POOL, subset_size=size),
        tuple(
            Backend(
                id=b, pool=POOL, host="h", ip=str(ipaddress.ip_address(0x0A000000 + i)), port=8080
            )
            for i, b in enumerate(ids)
            if b != gone
        ),
    )
    full = lists.pool_payload(snapshot, "e")
    assert full is not None
    subsets = {table.subset(c) for c in moved}
    sent = sum(len(lists.pool_payload(snapshot, "e", subset=table.subset(c)) or b"") for c in moved)
    print(
        f"  its fan-out: {len(moved):,} lists, {sent:,} bytes ({len(subsets):,} distinct lists "
        f"serialized); without subsetting {clients:,} lists of {len(full):,} bytes = "
        f"{clients * len(full):,} bytes"
    )
    before = {c: table.subset(c) for c in everyone}
    table.set_backends([*(b for b in ids if b != gone), "newcomer"])
    moved = [c for c in everyone if table.subset(c) != before[c]]
    print(
        f"  one backend joins: {len(moved):,} clients get a new subset (each gains it); "
        f"{spread(list(table.loads().values()))}"
    )
    # Drift: churn with no client turnover moves load by 1/size per event;
    # new streams go where the windows are lightest, so turnover heals it.
    pool = [*(b for b in ids if b != gone), "newcomer"]
    events = backends // 5
    for e in range(events):
        if rng.random() < 0.5:
            pool.remove(rng.choice(pool))
        else:
            pool.append(f"churn{e}")
        table.set_backends(pool)
    print(f"  after {events:,} departures and arrivals: {spread(list(table.loads().values()))}")
    turnover = clients * 3 // 10
    for old in rng.sample(everyone, turnover):
        table.leave(old)
    for c in range(turnover):
        table.join(("new", c))
    print(f"  then {turnover:,} clients reconnect: {spread(list(table.loads().values()))}")


async def _open(channel: grpc.aio.Channel, first: bytes) -> tuple[grpc.aio.StreamStreamCall, bytes]:
    call = channel.stream_stream(METHOD)()
    await call.write(first)
    await call.read()  # the initial response
    return call, await call.read()


def _backends_in(payload: bytes) -> list[str]:
    response = lb.LoadBalanceResponse.FromString(payload)
    return sorted(
        {f"{s.ip_address.hex()}:{s.port}" for s in response.server_list.servers if not s.drop}
    )


Opened = list[tuple[grpc.aio.StreamStreamCall, bytes]]


async def measure(
    balancer: str, streams: int, per_connection: int, backends: int
) -> tuple[Opened, list[grpc.aio.Channel]]:
    """Opens the streams at once; prints what their first lists say."""
    first = lb.LoadBalanceRequest(
        initial_request=lb.InitialLoadBalanceRequest(name=POOL)
    ).SerializeToString()
    channels = [
        grpc.aio.insecure_channel(balancer, options=[("grpc.use_local_subchannel_pool", 1)])
        for _ in range(max(1, -(-streams // per_connection)))
    ]
    t0 = time.perf_counter()
    opened = await asyncio.gather(
        *(_open(channels[i % len(channels)], first) for i in range(streams))
    )
    took = time.perf_counter() - t0
    connections: Counter[str] = Counter()
    for _, payload in opened:
        connections.update(_backends_in(payload))
    counts = [connections.get(k, 0) for k in connections] + [0] * (backends - len(connections))
    first_bytes = sum(len(p) for _, p in opened)
    print(f"    {streams:,} streams opened, first lists in {took:.2f} s, {first_bytes:,} bytes")
    print(f"    connections per backend: {spread(counts)}")
    return list(opened), channels


async def departure(opened: Opened, wait: float, leave: Callable[[], Awaitable[None]]) -> None:
    """Runs `leave` (one backend deregisters) and waits up to `wait` s for
    each stream's next list; prints how many came, and when."""
    got: list[int] = []
    arrived: list[float] = []

    async def next_list(call: grpc.aio.StreamStreamCall) -> None:
        payload = await call.read()
        got.append(len(payload))
        arrived.append(time.perf_counter())

    tasks = [asyncio.create_task(next_list(c)) for c, _ in opened]
    await asyncio.sleep(0.2)  # every read is waiting
    t0 = time.perf_counter()
    await leave()
    await asyncio.wait(tasks, timeout=wait)
    for t in tasks:
        t.cancel()
    last = f", the last {(max(arrived) - t0) * 1000:.0f} ms after the write" if arrived else ""
    print(
        f"    one backend deregisters: {len(got):,} of {len(opened):,} streams get a new list, "
        f"{sum(got):,} bytes in all{last}"
    )


def run_balancer(args: argparse.Namespace, size: int) -> None:
    config = PoolConfig.from_flat(
        POOL, report_interval_ms=0, lease_ttl_ms=3_600_000, health_checks=False,
        outlier_detection=False, subset_size=size,
    )  # fmt: skip
    limit = ("--max-streams-per-address", str(args.streams + 1000))
    with BenchLab({POOL: config}, args=limit) as lab:
        leases = []

        async def register() -> None:
            store = RegistryStore.from_url(lab.redis_process.url)
            for i in range(args.backends):
                ip = str(ipaddress.ip_address(0x0A000000 + i + 1))
                leases.append(
                    await store.register(
                        pool=POOL, host=ip, ip=ip, port=8080, lease_ttl_ms=3_600_000
                    )
                )
            await store.close()

        asyncio.run(register())
        time.sleep(1.0)  # the balancer reloads the pool

        async def main() -> None:
            opened, channels = await measure(
                lab.balancer, args.streams, args.streams_per_connection, args.backends
            )
            store = RegistryStore.from_url(lab.redis_process.url)
            lease = leases[len(leases) // 2]

            async def leave() -> None:
                await store.deregister(
                    pool=POOL, backend_id=lease.backend_id, lease_id=lease.lease_id
                )

            await departure(opened, args.wait, leave)
            await store.close()
            for call, _ in opened:
                call.cancel()
            for ch in channels:
                await ch.close()

        label = f"subset_size {size}" if size else "no subsetting"
        print(f"  {label}:")
        asyncio.run(main())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backends", type=int, default=200)
    parser.add_argument("--streams", type=int, default=1000)
    parser.add_argument("--streams-per-connection", type=int, default=100)
    parser.add_argument("--subset-size", type=int, default=20)
    parser.add_argument("--model-backends", type=int, default=1000)
    parser.add_argument("--model-clients", type=int, default=10_000)
    parser.add_argument("--wait", type=float, default=3.0, help="seconds to wait for new lists")
    parser.add_argument("--model-only", action="store_true")
    args = parser.parse_args()
    model(args.model_backends, args.model_clients, args.subset_size)
    if args.model_only:
        return
    print(
        f"a balancer: {args.backends:,} backends, {args.streams:,} streams "
        f"({args.streams_per_connection} per connection)"
    )
    for size in (0, args.subset_size):
        run_balancer(args, size)


if __name__ == "__main__":
    main()
