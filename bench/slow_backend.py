"""Round robin vs least_loaded with one backend 10x slower, in one run; and
least_loaded when one backend turns 10x slow in the middle of a run.

    .venv/bin/python bench/slow_backend.py [--seconds 20] [--concurrency 8]
        [--delay-ms 5] [--slow-factor 10] [--case steady|mid-run|both]

Starts a private Redis, a balancer and, per policy, a pool of 3 routeguide
demo servers as separate processes (the demo's --delay-ms injects the
latency; one server gets 10x). Each server registers itself with a
LoadMeter, so its heartbeats carry its mean latency. Then, for each policy
in turn, the thin client keeps a fixed number of GetFeature calls in flight
for a fixed time, after a warm-up, and the script prints p50/p99 latency
and throughput per policy and their ratios.

The mid-run case (a least_loaded pool of 3 at --delay-ms) keeps the same
load on for --mid-seconds; after --warmup, one server turns --slow-factor
times slower (SIGUSR1 to a demo server run by this script), and the
script prints that server's share of the calls answered in each half
second, and how long after the switch its share first fell below half of
what it had before. No assertion: the numbers go to docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import statistics
import subprocess
import sys
import threading
import time

import grpc
from _lab import BenchLab, drive, percentile

from client_lib import LookasideChannel
from lookaside.redis_process import free_port
from lookaside_proto.routeguide.v1 import route_guide_pb2 as rg
from lookaside_proto.routeguide.v1 import route_guide_pb2_grpc as rg_grpc
from lookaside_registry.model import PoolConfig

SWITCHABLE = "switchable"  # the x-served-by name of the server that turns slow
WINDOW = 0.5  # seconds per share sample


def serve_switchable(balancer: str, pool: str, delay_ms: int, factor: int) -> None:
    """A demo routeguide server whose delay turns `factor` times longer on
    SIGUSR1 (run in a process of its own by the mid-run case)."""
    from lookaside.demo import server as demo
    from lookaside.demo.settings import ServerSettings

    class Switchable(demo.RouteGuideServer):
        async def start(self) -> int:
            port = await super().start()
            asyncio.get_running_loop().add_signal_handler(signal.SIGUSR1, self.slow_down)
            return port

        def slow_down(self) -> None:
            self.interceptor.delay *= factor

    demo.RouteGuideServer = Switchable  # type: ignore[misc]
    settings = ServerSettings.model_validate(
        {
            "listen": f"127.0.0.1:{free_port()}",
            "name": SWITCHABLE,
            "balancer": balancer,
            "pool": pool,
            "delay_ms": delay_ms,
            "log_level": "warning",
        }
    )
    sys.exit(asyncio.run(demo.serve(settings)))


def mid_run(lab: BenchLab, args: argparse.Namespace) -> None:
    for _ in range(2):
        lab.server("mid", "--delay-ms", str(args.delay_ms))
    switchable = subprocess.Popen(
        [sys.executable, __file__, "--serve-switchable", lab.balancer, "mid",
         str(args.delay_ms), str(args.slow_factor)],
        stdout=subprocess.DEVNULL,
    )  # fmt: skip
    lab.procs.append(switchable)
    lab.wait_registered({"mid": 3})
    channel = LookasideChannel("mid", lab.balancer)
    assert channel.wait_for_list(10)
    stub = rg_grpc.RouteGuideStub(channel)
    answers: list[tuple[float, str]] = []
    start = time.monotonic()
    stop_at = start + args.warmup + args.mid_seconds

    def worker() -> None:
        point = rg.Point(latitude=409146138, longitude=-746188906)
        while time.monotonic() < stop_at:
            try:
                _, call = stub.GetFeature.with_call(point, timeout=10)
            except grpc.RpcError:
                continue
            served_by = dict(call.initial_metadata()).get("x-served-by", "")
            answers.append((time.monotonic() - start, served_by))

    threads = [threading.Thread(target=worker) for _ in range(args.concurrency)]
    for t in threads:
        t.start()
    time.sleep(args.warmup)
    switchable.send_signal(signal.SIGUSR1)
    for t in threads:
        t.join()
    channel.close()

    def share(t0: float, t1: float) -> tuple[float, int]:
        window = [who for t, who in answers if t0 <= t < t1]
        return (window.count(SWITCHABLE) / len(window) if window else 0.0), len(window)

    before, _ = share(args.warmup - 2.0, args.warmup)
    print(
        f"least_loaded, 3 backends at {args.delay_ms} ms; one turns "
        f"{args.delay_ms * args.slow_factor} ms at t={args.warmup:g}s; "
        f"{args.concurrency} calls in flight"
    )
    print(f"  its share of the calls in the 2 s before: {before:.1%}")
    print(f"  {'window s':>12s} {'its share':>10s} {'calls':>7s}")
    fell_at = None
    t = args.warmup
    while t < args.warmup + args.mid_seconds:
        part, n = share(t, t + WINDOW)
        if fell_at is None and part < before / 2:
            fell_at = t + WINDOW - args.warmup
        print(f"  {t - args.warmup:5.1f}-{t + WINDOW - args.warmup:4.1f} {part:10.1%} {n:7d}")
        t += WINDOW
    print(
        "  its share fell below half of before within "
        + (f"{fell_at:.1f}s of the switch" if fell_at is not None else "the run: never")
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--warmup", type=float, default=8.0)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--delay-ms", type=int, default=5)
    parser.add_argument("--slow-factor", type=int, default=10)
    parser.add_argument("--case", choices=["steady", "mid-run", "both"], default="both")
    parser.add_argument("--mid-seconds", type=float, default=6.0)
    parser.add_argument("--serve-switchable", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_switchable:
        balancer, pool, delay_ms, factor = args.serve_switchable
        serve_switchable(balancer, pool, int(delay_ms), int(factor))

    # Short leases: heartbeats (and latency reports) every second.
    pools = {
        "rr": PoolConfig(name="rr", policy="round_robin", lease_ttl_ms=3000),
        "ll": PoolConfig(name="ll", policy="least_loaded", lease_ttl_ms=3000),
        "mid": PoolConfig(name="mid", policy="least_loaded", lease_ttl_ms=3000),
    }
    with BenchLab(pools) as lab:
        if args.case != "steady":
            mid_run(lab, args)
            if args.case == "mid-run":
                return
        for pool in pools:
            for i in range(3):
                delay = args.delay_ms * (args.slow_factor if i == 2 else 1)
                lab.server(pool, "--delay-ms", str(delay))
        lab.wait_registered({"rr": 3, "ll": 3})

        results = {}
        for pool, label in (("rr", "round_robin"), ("ll", "least_loaded")):
            channel = LookasideChannel(pool, lab.balancer)
            assert channel.wait_for_list(10)
            drive(channel, args.warmup, args.concurrency)  # lets heartbeats report latency
            latencies, qps = drive(channel, args.seconds, args.concurrency)
            entries = channel.backends()
            channel.close()
            results[label] = (
                percentile(latencies, 0.50) * 1000,
                percentile(latencies, 0.99) * 1000,
                statistics.fmean(latencies) * 1000,
                qps,
                len(latencies),
                len(entries),
            )
        print(
            f"3 backends, delay {args.delay_ms} ms, one at {args.delay_ms * args.slow_factor} ms; "
            f"{args.concurrency} calls in flight for {args.seconds:g}s after {args.warmup:g}s warm-up"
        )
        print(
            f"  {'policy':13s} {'p50 ms':>8s} {'p99 ms':>8s} {'mean ms':>8s} {'calls/s':>9s} {'calls':>8s} {'list len':>9s}"
        )
        for label, (p50, p99, mean, qps, n, length) in results.items():
            print(f"  {label:13s} {p50:8.2f} {p99:8.2f} {mean:8.2f} {qps:9.1f} {n:8d} {length:9d}")
        rr, ll = results["round_robin"], results["least_loaded"]
        print(
            f"  ratios (round_robin / least_loaded): p50 {rr[0] / ll[0]:.2f}x, "
            f"p99 {rr[1] / ll[1]:.2f}x; throughput least_loaded / round_robin {ll[3] / rr[3]:.2f}x"
        )


if __name__ == "__main__":
    main()
