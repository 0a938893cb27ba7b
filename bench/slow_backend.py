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

from _lab import BenchLab, drive, percentile

from client_lib import LookasideChannel
from lookaside.registry.model import PoolConfig


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--warmup", type=float, default=8.0)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--delay-ms", type=int, default=5)
    parser.add_argument("--slow-factor", type=int, default=10)
    args = parser.parse_args()

    # Short leases: heartbeats (and latency reports) every second.
    pools = {
        "rr": PoolConfig(name="rr", policy="round_robin", lease_ttl_ms=3000),
        "ll": PoolConfig(name="ll", policy="least_loaded", lease_ttl_ms=3000),
    }
    with BenchLab(pools) as lab:
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
