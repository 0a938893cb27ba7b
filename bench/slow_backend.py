"""Round robin vs least_loaded with one backend 10x slower, in one run.

    .venv/bin/python bench/slow_backend.py [--seconds 20] [--concurrency 8]
        [--delay-ms 5] [--slow-factor 10]

Starts a private Redis, a balancer and, per policy, a pool of 3 routeguide
demo servers as separate processes (the demo's --delay-ms injects the
latency; one server gets 10x). Each server registers itself with a
LoadMeter, so its heartbeats carry its mean latency. Then, for each policy
in turn, the thin client keeps a fixed number of GetFeature calls in flight
for a fixed time, after a warm-up, and the script prints p50/p99 latency
and throughput per policy and their ratios. No assertion: the numbers go
to docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import grpc
import redis

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from client_lib import LookasideChannel  # noqa: E402
from lookaside.proto.routeguide.v1 import route_guide_pb2 as rg  # noqa: E402
from lookaside.proto.routeguide.v1 import route_guide_pb2_grpc as rg_grpc  # noqa: E402
from lookaside.redis_process import RedisProcess, free_port  # noqa: E402
from lookaside.registry import keys  # noqa: E402
from lookaside.registry.model import PoolConfig  # noqa: E402


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def drive(channel: grpc.Channel, seconds: float, concurrency: int) -> tuple[list[float], float]:
    stub = rg_grpc.RouteGuideStub(channel)
    latencies: list[list[float]] = [[] for _ in range(concurrency)]
    stop_at = time.perf_counter() + seconds

    def worker(out: list[float]) -> None:
        point = rg.Point(latitude=409146138, longitude=-746188906)
        while time.perf_counter() < stop_at:
            t0 = time.perf_counter()
            stub.GetFeature(point, timeout=10)
            out.append(time.perf_counter() - t0)

    threads = [threading.Thread(target=worker, args=(latencies[i],)) for i in range(concurrency)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - start
    flat = [x for chunk in latencies for x in chunk]
    return flat, len(flat) / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--warmup", type=float, default=8.0)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--delay-ms", type=int, default=5)
    parser.add_argument("--slow-factor", type=int, default=10)
    args = parser.parse_args()

    procs: list[subprocess.Popen[bytes]] = []
    with RedisProcess() as rp:
        client = redis.Redis.from_url(rp.url)
        try:
            lb = f"127.0.0.1:{free_port()}"
            procs.append(subprocess.Popen(
                [sys.executable, "-m", "lookaside", "balancer", "--listen", lb, "--redis-url", rp.url,
                 "--metrics-listen", "", "--log-level", "warning"],
            ))  # fmt: skip
            import asyncio

            from lookaside.registry.store import RegistryStore

            async def configure() -> None:
                store = RegistryStore.from_url(rp.url)
                for pool, policy in (("rr", "round_robin"), ("ll", "least_loaded")):
                    # Short leases: heartbeats (and latency reports) every second.
                    await store.put_pool(PoolConfig(name=pool, policy=policy, lease_ttl_ms=3000))
                await store.close()

            asyncio.run(configure())
            ready = grpc.insecure_channel(lb)
            grpc.channel_ready_future(ready).result(timeout=20)
            ready.close()
            for pool in ("rr", "ll"):
                for i in range(3):
                    delay = args.delay_ms * (args.slow_factor if i == 2 else 1)
                    procs.append(subprocess.Popen(
                        [sys.executable, "-m", "lookaside", "routeguide", "server",
                         "--listen", f"127.0.0.1:{free_port()}", "--balancer", lb, "--pool", pool,
                         "--delay-ms", str(delay), "--log-level", "warning"],
                        stdout=subprocess.DEVNULL,
                    ))  # fmt: skip
            deadline = time.monotonic() + 30
            while any(client.hlen(keys.backends(p)) < 3 for p in ("rr", "ll")):
                if time.monotonic() > deadline:
                    raise SystemExit("backends did not register")
                time.sleep(0.1)

            results = {}
            for pool, label in (("rr", "round_robin"), ("ll", "least_loaded")):
                channel = LookasideChannel(pool, lb)
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
                print(
                    f"  {label:13s} {p50:8.2f} {p99:8.2f} {mean:8.2f} {qps:9.1f} {n:8d} {length:9d}"
                )
            rr, ll = results["round_robin"], results["least_loaded"]
            print(
                f"  ratios (round_robin / least_loaded): p50 {rr[0] / ll[0]:.2f}x, "
                f"p99 {rr[1] / ll[1]:.2f}x; throughput least_loaded / round_robin {ll[3] / rr[3]:.2f}x"
            )
        finally:
            for p in procs:
                p.terminate()
            for p in procs:
                try:
                    p.wait(15)
                except subprocess.TimeoutExpired:
                    p.kill()
            client.close()


if __name__ == "__main__":
    main()
