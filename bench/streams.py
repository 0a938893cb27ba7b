"""Many BalanceLoad streams on one balancer: opening them all at once, the
memory each costs, and how long one registration takes to reach all of them.

    .venv/bin/python bench/streams.py [--streams 10000] [--clients 2]
        [--streams-per-connection 100] [--updates 5] [--profile FILE]

Starts a private Redis and one balancer process, and a pool with one
backend. Client processes (grpc.aio, raw bytes, one HTTP/2 connection per
`--streams-per-connection` streams; 1 is how clients have them) open their
share of the streams all at once and wait for the first list on each. The
script then reads the balancer's RSS, registers one more backend through
the Registry API's Register RPC (`--updates` times, a second apart), and
each client notes when every stream receives each new list. It prints:
streams opened and refused, time to open, balancer RSS per stream, the
registration-to-list delay (p50, p99, max) over all streams, the
balancer's own fan-out time from its /metrics (from the new list to its
last write), and the balancer's CPU per update (user + system, from the
registration to its last write, less its idle rate). Clients and balancer
share this machine's cores, so the delays include the clients' own time
to read 10,000 messages. `--profile FILE` records the balancer with py-spy
during the registrations. No assertion: the numbers go to
docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import grpc
import grpc.aio
import psutil
from _lab import BenchLab, RawStreams, percentile

from lookaside_proto.registry.v1 import registry_pb2, registry_pb2_grpc
from lookaside_registry.model import PoolConfig, RegistrationRules

POOL = "fanout"


async def _client(
    balancer: str, streams: int, per_connection: int, updates: int, wait: float
) -> None:
    """One client process: prints `ready <opened> <refused> <seconds>
    <json refusals by status>` once every stream has its first list (or was
    refused); then, for each of `updates` new lists, prints `arrivals <json
    list of unix times>` once every stream has it."""
    raw = RawStreams(balancer, POOL, streams, per_connection)
    elapsed = await asyncio.wait_for(raw.open(), wait)
    # The clients measure the balancer: a full collection of their own
    # (seconds, at thousands of streams per process) would count as delay.
    gc.freeze()
    gc.disable()
    refused = sum(raw.refusals.values())
    print(f"ready {len(raw.calls)} {refused} {elapsed:.3f} {json.dumps(raw.refusals)}", flush=True)
    for _ in range(updates):
        arrivals: list[float] = []

        async def next_list(call: grpc.aio.StreamStreamCall) -> None:
            await call.read()
            arrivals.append(time.time())  # noqa: B023 - awaited within this iteration

        await asyncio.wait([asyncio.create_task(next_list(c)) for c in raw.calls], timeout=wait)
        print("arrivals " + json.dumps(arrivals), flush=True)
    await raw.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--streams", type=int, default=10_000)
    parser.add_argument("--clients", type=int, default=2)
    parser.add_argument("--streams-per-connection", type=int, default=100)
    parser.add_argument("--updates", type=int, default=5)
    parser.add_argument("--wait", type=float, default=120.0)
    parser.add_argument(
        "--profile",
        metavar="FILE",
        help="record the balancer with py-spy during the registrations (collapsed stacks: "
        "FILE, one stack a line with its sample count)",
    )
    parser.add_argument("--client", metavar="BALANCER", help=argparse.SUPPRESS)
    args = parser.parse_args()
    py_spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    if args.profile and not Path(py_spy).exists():
        parser.error("--profile needs py-spy (pip install py-spy; it is in the dev extra)")
    if args.client:
        asyncio.run(
            _client(args.client, args.streams, args.streams_per_connection, args.updates, args.wait)
        )
        return

    # Hour-long leases: the backends registered here send no heartbeats,
    # and an expiry would be one more list that no one asked for.
    # The registrations name addresses other than this process's own.
    rules = RegistrationRules(address_policy="any", max_lease_ttl_ms=3_600_000)
    config = PoolConfig.from_flat(
        POOL, report_interval_ms=0, lease_ttl_ms=3_600_000, health_checks=False, registration=rules
    )
    # Every client process dials from 127.0.0.1: the per-address limit, a
    # guard against one abusive host, is raised past the streams measured.
    limit = ("--max-streams-per-address", str(args.streams + 1000))
    with BenchLab({POOL: config}, metrics=True, args=limit) as lab:
        registry = registry_pb2_grpc.RegistryStub(grpc.insecure_channel(lab.balancer))
        registry.Register(registry_pb2.RegisterRequest(pool=POOL, host="10.0.0.1", port=1))
        balancer = psutil.Process(lab.procs[0].pid)
        time.sleep(1.0)
        rss_before = balancer.memory_info().rss

        share = [
            args.streams // args.clients + (i < args.streams % args.clients)
            for i in range(args.clients)
        ]

        def client_args(n: int) -> list[str]:
            return [
                sys.executable, str(Path(__file__).resolve()), "--client", lab.balancer,
                "--streams", str(n), "--streams-per-connection", str(args.streams_per_connection),
                "--updates", str(args.updates), "--wait", str(args.wait),
            ]  # fmt: skip

        clients = [
            subprocess.Popen(client_args(n), stdout=subprocess.PIPE, text=True) for n in share
        ]
        opened = refused = 0
        open_seconds = 0.0
        why: Counter[str] = Counter()
        for c in clients:
            assert c.stdout is not None
            _, o, r, secs, codes = c.stdout.readline().split(" ", 4)
            opened, refused = opened + int(o), refused + int(r)
            open_seconds = max(open_seconds, float(secs))
            why.update(json.loads(codes))
        time.sleep(1.0)
        rss_after = balancer.memory_info().rss

        spy = None
        if args.profile:
            # With PYSPY_NATIVE=1, C frames too (py-spy must then pause the
            # process for each sample).
            native = ["--native"] if os.environ.get("PYSPY_NATIVE") else ["--nonblocking"]
            spy = subprocess.Popen(
                [py_spy, "record", "--pid", str(balancer.pid), "--rate", "250",
                 "--format", "raw", "--output", args.profile, "--threads", *native],
                stdout=subprocess.DEVNULL,
            )  # fmt: skip
        rounds = []
        cpu: list[float] = []  # the balancer's CPU seconds per update, idle subtracted
        for u in range(args.updates):
            idle0, i0 = _cpu(balancer), time.perf_counter()
            time.sleep(1.0)
            idle = (_cpu(balancer) - idle0) / (time.perf_counter() - i0)
            t0, c0, p0 = time.time(), _cpu(balancer), time.perf_counter()
            registry.Register(registry_pb2.RegisterRequest(pool=POOL, host="10.0.0.2", port=2 + u))
            delays: list[float] = []
            for c in clients:
                assert c.stdout is not None
                line = c.stdout.readline()
                delays += [t - t0 for t in json.loads(line.removeprefix("arrivals "))]
            time.sleep(0.2)  # the balancer's last completions
            cpu.append(_cpu(balancer) - c0 - idle * (time.perf_counter() - p0))
            rounds.append(
                (percentile(delays, 0.5), percentile(delays, 0.99), max(delays), len(delays))
            )
        if spy is not None:
            spy.send_signal(signal.SIGINT)
            spy.wait(30)
        for c in clients:
            c.wait(30)
        fanouts = lab.metric("lookaside_balancer_fanout_seconds_count", pool=POOL)
        fanout = lab.metric("lookaside_balancer_fanout_seconds_sum", pool=POOL)

    print(
        f"{args.streams} streams from {args.clients} client processes, "
        f"{args.streams_per_connection} per connection, all opened at once"
    )
    print(f"  opened {opened}, refused {refused}, all first lists in {open_seconds:.2f} s")
    for reason, n in why.most_common():
        print(f"    refused {n}: {reason}")
    print(
        f"  balancer RSS {rss_before / 2**20:.1f} MiB -> {rss_after / 2**20:.1f} MiB: "
        f"{(rss_after - rss_before) / max(opened, 1) / 1024:.1f} KiB per stream"
    )
    print(f"  registration -> new list, {args.updates} registrations one second apart:")
    for i, (p50, p99, top, n) in enumerate(rounds, 1):
        print(
            f"    #{i}: on {n} of {opened} streams, p50 {p50 * 1000:.0f} ms, "
            f"p99 {p99 * 1000:.0f} ms, max {top * 1000:.0f} ms"
        )
    print(
        f"    median of the rounds: p50 {statistics.median(r[0] for r in rounds) * 1000:.0f} ms, "
        f"p99 {statistics.median(r[1] for r in rounds) * 1000:.0f} ms"
    )
    print(
        f"  balancer's own fan-out (new list -> last write, lookaside_balancer_fanout_seconds): "
        f"mean {fanout / max(fanouts, 1) * 1000:.0f} ms over {fanouts:.0f} updates"
    )
    per_update = statistics.median(cpu)
    print(
        f"  balancer CPU per update (user+sys, registration to last write, idle subtracted): "
        f"median {per_update * 1000:.1f} ms, {per_update / max(opened, 1) * 1e6:.1f} us per stream"
    )


def _cpu(process: psutil.Process) -> float:
    """CPU seconds (user + system) of the process so far, all its threads."""
    times = process.cpu_times()
    return times.user + times.system


if __name__ == "__main__":
    main()
