"""Many BalanceLoad streams on one balancer: opening them all at once, the
memory each costs, and how long one registration takes to reach all of them.

    .venv/bin/python bench/streams.py [--streams 10000] [--clients 2]
        [--streams-per-connection 100] [--updates 5] [--workers 1]
        [--profile FILE]

Starts a private Redis and one balancer process (`--workers N`: a
supervisor and N worker processes on one port), and a pool with one
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
registration to its last write, less its idle rate). With workers, RSS and
CPU are those of the supervisor and all its workers together, the streams
each worker holds are printed, and the fan-out time of an update is that of
its slowest worker (each worker's own from the aggregated /metrics). Last, once
the clients have exited, how long the balancer takes to end their streams,
then to stop on SIGTERM, and its exit status. Clients and balancer
share this machine's cores, so the delays include the clients' own time
to read 10,000 messages. `--profile FILE` records the balancer with py-spy
during the registrations. No assertion: the numbers go to
docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
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
    parser.add_argument(
        "--clients", type=int, help="client processes (default: 2, or 2 per worker)"
    )
    parser.add_argument("--streams-per-connection", type=int, default=100)
    parser.add_argument("--updates", type=int, default=5)
    parser.add_argument("--wait", type=float, default=120.0)
    parser.add_argument(
        "--workers",
        type=int,
        default=1,
        help="balancer worker processes (lookaside balancer --workers)",
    )
    parser.add_argument(
        "--profile",
        metavar="FILE",
        help="record the balancer with py-spy during the registrations (collapsed stacks: "
        "FILE, one stack a line with its sample count)",
    )
    parser.add_argument("--client", metavar="BALANCER", help=argparse.SUPPRESS)
    args = parser.parse_args()
    py_spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    if args.workers < 1:
        parser.error("--workers must be at least 1")
    if args.clients is None:
        args.clients = 2 if args.workers == 1 else 2 * args.workers
    if args.profile and args.workers > 1:
        parser.error("--profile records one balancer process: use it with --workers 1")
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
    # guard against one abusive host, is raised past the streams measured
    # (in each worker: the kernel may give any worker more than its share).
    limit = ("--max-streams-per-address", str(args.streams + 1000))
    with BenchLab({POOL: config}, metrics=True, args=limit, workers=args.workers) as lab:
        registry = registry_pb2_grpc.RegistryStub(grpc.insecure_channel(lab.balancer))
        registry.Register(registry_pb2.RegisterRequest(pool=POOL, host="10.0.0.1", port=1))
        balancer = Processes(psutil.Process(lab.procs[0].pid))
        time.sleep(1.0)
        rss_before = balancer.rss()

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
        rss_after = balancer.rss()
        held = lab.per_worker("lookaside_balancer_streams_open", pool=POOL)

        spy = None
        if args.profile:
            # With PYSPY_NATIVE=1, C frames too (py-spy must then pause the
            # process for each sample).
            native = ["--native"] if os.environ.get("PYSPY_NATIVE") else ["--nonblocking"]
            spy = subprocess.Popen(
                [py_spy, "record", "--pid", str(balancer.top.pid), "--rate", "250",
                 "--format", "raw", "--output", args.profile, "--threads", *native],
                stdout=subprocess.DEVNULL,
            )  # fmt: skip
        rounds = []
        cpu: list[float] = []  # the balancer's CPU seconds per update, idle subtracted
        slowest: list[float] = []  # per update, the slowest worker's fan-out seconds
        fanned: list[int] = []  # per update, the fan-outs the workers made
        for u in range(args.updates):
            idle0, i0 = balancer.cpu(), time.perf_counter()
            time.sleep(1.0)
            idle = (balancer.cpu() - idle0) / (time.perf_counter() - i0)
            sums = lab.per_worker("lookaside_balancer_fanout_seconds_sum", pool=POOL)
            counts = lab.per_worker("lookaside_balancer_fanout_seconds_count", pool=POOL)
            t0, c0, p0 = time.time(), balancer.cpu(), time.perf_counter()
            registry.Register(registry_pb2.RegisterRequest(pool=POOL, host="10.0.0.2", port=2 + u))
            delays: list[float] = []
            for c in clients:
                assert c.stdout is not None
                line = c.stdout.readline()
                delays += [t - t0 for t in json.loads(line.removeprefix("arrivals "))]
            # The balancer's last write completes after its list has
            # arrived (its completions of thousands of writes): the window
            # ends when every worker with streams has observed its fan-out.
            deadline = time.monotonic() + args.wait
            while time.monotonic() < deadline:
                time.sleep(0.1)
                now = lab.per_worker("lookaside_balancer_fanout_seconds_count", pool=POOL)
                if all(now.get(w, 0.0) > counts.get(w, 0.0) for w, n in held.items() if n):
                    break
            cpu.append(balancer.cpu() - c0 - idle * (time.perf_counter() - p0))
            after = lab.per_worker("lookaside_balancer_fanout_seconds_sum", pool=POOL)
            slowest.append(max((v - sums.get(w, 0.0) for w, v in after.items()), default=0.0))
            after = lab.per_worker("lookaside_balancer_fanout_seconds_count", pool=POOL)
            fanned.append(round(sum(after.values()) - sum(counts.values())))
            rounds.append(
                (
                    percentile(delays, 0.5),
                    percentile(delays, 0.99),
                    max(delays, default=float("nan")),
                    len(delays),
                )
            )
        if spy is not None:
            spy.send_signal(signal.SIGINT)
            spy.wait(30)
        for c in clients:
            c.wait(30)
        # The balancer's side of the clients' exit: each of its streams
        # ends (cancelled) and leaves its feed.
        g0 = time.perf_counter()
        left = lab.metric("lookaside_balancer_streams_open", pool=POOL)
        while left > 0 and time.perf_counter() - g0 < args.wait:
            time.sleep(0.1)
            left = lab.metric("lookaside_balancer_streams_open", pool=POOL)
        gone_seconds = time.perf_counter() - g0
        fanouts = lab.metric("lookaside_balancer_fanout_seconds_count", pool=POOL)
        fanout = lab.metric("lookaside_balancer_fanout_seconds_sum", pool=POOL)
        restarts = lab.metric("lookaside_balancer_worker_restarts_total")
        # Its shutdown, the clients gone: SIGTERM, as an operator stops it.
        s0 = time.perf_counter()
        lab.procs[0].terminate()
        stop_code = lab.procs[0].wait(60)
        stop_seconds = time.perf_counter() - s0

    workers = f", balancer with {args.workers} workers" if args.workers > 1 else ""
    print(
        f"{args.streams} streams from {args.clients} client processes, "
        f"{args.streams_per_connection} per connection, all opened at once{workers}"
    )
    print(f"  opened {opened}, refused {refused}, all first lists in {open_seconds:.2f} s")
    for reason, n in why.most_common():
        print(f"    refused {n}: {reason}")
    print(
        f"  balancer RSS {rss_before / 2**20:.1f} MiB -> {rss_after / 2**20:.1f} MiB: "
        f"{(rss_after - rss_before) / max(opened, 1) / 1024:.1f} KiB per stream"
    )
    if args.workers > 1:
        print(
            "  streams per worker: "
            + ", ".join(f"w{w} {n:.0f}" for w, n in sorted(held.items()) if w)
            + f"; worker restarts {restarts:.0f}"
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
    if args.workers > 1:
        print(
            "  slowest worker's fan-out per update: "
            + ", ".join(f"{s * 1000:.0f} ms" for s in slowest)
            + f" (fan-outs per update, one per worker: {fanned})"
        )
    print(
        f"  clients gone: the balancer's streams ended within {gone_seconds:.1f} s "
        f"({left:.0f} left open)"
    )
    print(f"  balancer stopped on SIGTERM in {stop_seconds:.1f} s, exit status {stop_code}")
    # Idle time subtracted can exceed a tiny run's own work: no less than 0.
    per_update = max(statistics.median(cpu), 0.0)
    print(
        f"  balancer CPU per update (user+sys, registration to last write, idle subtracted): "
        f"median {per_update * 1000:.1f} ms, {per_update / max(opened, 1) * 1e6:.1f} us per stream"
    )


class Processes:
    """The balancer's processes: the one started and, with workers, its
    children (looked up at each call: the supervisor restarts dead ones)."""

    def __init__(self, top: psutil.Process) -> None:
        self.top = top

    def all(self) -> list[psutil.Process]:
        return [self.top, *self.top.children(recursive=True)]

    def rss(self) -> int:
        total = 0
        for p in self.all():
            with contextlib.suppress(psutil.NoSuchProcess):
                total += p.memory_info().rss
        return total

    def cpu(self) -> float:
        """CPU seconds (user + system) so far, all processes and threads."""
        total = 0.0
        for p in self.all():
            with contextlib.suppress(psutil.NoSuchProcess):
                times = p.cpu_times()
                total += times.user + times.system
        return total


if __name__ == "__main__":
    main()
