"""Load reports (ClientStats) ingested into Redis: how many per second one
balancer takes, and whether every one arrives.

    .venv/bin/python bench/reports.py [--streams 1000] [--clients 2]
        [--seconds 10] [--workers 1]

Starts a private Redis and one balancer (`--workers N`: a supervisor and N
worker processes on one port), and a pool with one backend. Client processes open their share of the streams (grpc.aio, raw
bytes) and then send ClientStats on every stream as fast as the balancer
takes them (each stream sends its next report once the previous one is
written, so the balancer's flow control sets the pace) for a fixed time.
Each report counts one call started and one finished. The script prints
the reports sent per second, and, once the balancer has flushed, the
reports and calls in Redis against those sent. No assertion: the numbers go
to docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import time
from pathlib import Path

import grpc.aio
from _lab import BenchLab, RawStreams

from lookaside_proto.lb.v1 import load_balancer_pb2 as lb
from lookaside_registry import keys
from lookaside_registry.model import PoolConfig, RegistrationRules

POOL = "reports"


async def _client(balancer: str, streams: int, per_connection: int, seconds: float) -> None:
    """One client process: prints `ready`, waits for a line on stdin, sends
    reports for `seconds`, half-closes every stream and waits for the
    balancer to end it, then prints `sent <reports> <seconds sending>
    <seconds until the balancer had read them all>`."""
    raw = RawStreams(balancer, POOL, streams, per_connection)
    await raw.open()
    print("ready", flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
    report = lb.LoadBalanceRequest(
        client_stats=lb.ClientStats(
            num_calls_started=1, num_calls_finished=1, num_calls_finished_known_received=1
        )
    ).SerializeToString()
    sent = 0
    stop_at = time.perf_counter() + seconds

    async def send(call: grpc.aio.StreamStreamCall) -> None:
        nonlocal sent
        while time.perf_counter() < stop_at:
            await call.write(report)
            sent += 1

    async def finish(call: grpc.aio.StreamStreamCall) -> None:
        # Half-close, then wait for the balancer to end the stream: it has
        # read every report by then.
        await call.done_writing()
        await call.code()

    start = time.perf_counter()
    await asyncio.gather(*(send(c) for c in raw.calls))
    elapsed = time.perf_counter() - start
    await asyncio.gather(*(finish(c) for c in raw.calls))
    print(f"sent {sent} {elapsed:.3f} {time.perf_counter() - start:.3f}", flush=True)
    await raw.close()


def _cpu(pids: list[int], tree: bool = False) -> float:
    """User and system CPU seconds of these processes (and their children)."""
    import psutil

    total = 0.0
    for pid in pids:
        procs = [psutil.Process(pid)]
        if tree:
            procs += procs[0].children(recursive=True)
        for p in procs:
            try:
                t = p.cpu_times()
            except psutil.NoSuchProcess:
                continue
            total += t.user + t.system
    return total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--streams", type=int, default=1000)
    parser.add_argument("--clients", type=int, default=2)
    parser.add_argument("--streams-per-connection", type=int, default=100)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--workers", type=int, default=1, help="balancer worker processes")
    parser.add_argument("--client", metavar="BALANCER", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.client:
        asyncio.run(_client(args.client, args.streams, args.streams_per_connection, args.seconds))
        return

    # Clients report only what this script sends (report_interval_ms 0 is
    # for the balancer's advice; these raw clients ignore it anyway).
    # The registration names an address other than this process's own.
    rules = RegistrationRules(address_policy="any")
    pools = {
        POOL: PoolConfig.from_flat(
            POOL, report_interval_ms=0, health_checks=False, registration=rules
        )
    }
    # These clients report as fast as they can, which the balancer would
    # drop after a burst (reports faster than the interval): measure
    # ingestion with the burst set out of reach.
    os.environ["LOOKASIDE_BALANCER_REPORT_BURST"] = str(1 << 40)
    with BenchLab(pools, metrics=True, workers=args.workers) as lab:
        from lookaside_proto.registry.v1 import registry_pb2, registry_pb2_grpc

        registry = registry_pb2_grpc.RegistryStub(grpc.insecure_channel(lab.balancer))
        registry.Register(registry_pb2.RegisterRequest(pool=POOL, host="10.0.0.1", port=1))
        share = [
            args.streams // args.clients + (i < args.streams % args.clients)
            for i in range(args.clients)
        ]
        clients = [
            subprocess.Popen(
                [
                    sys.executable,
                    str(Path(__file__).resolve()),
                    "--client",
                    lab.balancer,
                    "--streams",
                    str(n),
                    "--streams-per-connection",
                    str(args.streams_per_connection),
                    "--seconds",
                    str(args.seconds),
                ],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                text=True,
            )  # fmt: skip
            for n in share
        ]
        for c in clients:
            assert c.stdout is not None and c.stdout.readline().strip() == "ready"
        # CPU seconds from "go" until every report is read: contention on a
        # shared machine stretches the wall clock, much less these.
        balancer = lab.procs[0].pid
        cpu_before = _cpu([balancer], tree=True), _cpu([c.pid for c in clients])
        for c in clients:
            assert c.stdin is not None
            c.stdin.write("go\n")
            c.stdin.flush()
        sent, seconds, read_by = 0, 0.0, 0.0
        for c in clients:
            assert c.stdout is not None
            _, n, secs, until = c.stdout.readline().split()
            sent, seconds = sent + int(n), max(seconds, float(secs))
            read_by = max(read_by, float(until))
        balancer_cpu = _cpu([balancer], tree=True) - cpu_before[0]
        clients_cpu = _cpu([c.pid for c in clients]) - cpu_before[1]
        for c in clients:
            c.wait(60)
        # The balancer writes its sums about once a second.
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            stored = int(lab.redis.hget(keys.load_total(POOL), "reports") or 0)
            if stored >= sent:
                break
            time.sleep(0.2)
        total = {k.decode(): int(v) for k, v in lab.redis.hgetall(keys.load_total(POOL)).items()}
        received = lab.metric("lookaside_balancer_load_reports_total", pool=POOL)

    print(
        f"{args.streams} streams from {args.clients} client processes, "
        f"reporting as fast as the balancer takes them for {args.seconds:g}s; "
        f"{args.workers} balancer worker{'s' if args.workers > 1 else ''}"
    )
    print(
        f"  sent {sent} reports in {seconds:.2f} s, all read by the balancer after "
        f"{read_by:.2f} s: {sent / read_by:,.0f} reports/s"
    )
    print(
        f"  CPU per report: balancer {balancer_cpu / sent * 1e6:.1f} us, "
        f"clients {clients_cpu / sent * 1e6:.1f} us"
    )
    print(
        f"  balancer wrote {received:.0f} (lookaside_balancer_load_reports_total); "
        f"Redis holds {total.get('reports', 0)} reports"
    )
    print(
        f"  Redis calls started {total.get('started', 0)}, finished {total.get('finished', 0)} "
        f"(each report carries 1 and 1): lost {sent - total.get('reports', 0)}"
    )


if __name__ == "__main__":
    main()
