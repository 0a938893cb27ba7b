"""Outlier detection off vs on, with one of four backends losing every call.

    .venv/bin/python bench/blackhole.py [--seconds 40] [--concurrency 8]
        [--timeout-ms 250]

Starts a private Redis, a balancer and, per pool, 4 routeguide demo servers
as separate processes; one of them black-holes every call (the demo's
--blackhole-percent 1: no answer at all, while its health service keeps
answering SERVING, so health checks cannot see it). The two pools differ
only in outlier detection. For each pool in turn, the thin client keeps a
fixed number of GetFeature calls in flight, each with a deadline, for a
fixed time, and the script prints the share of calls lost, throughput, and
the latency of the calls that succeeded, per pool and as ratios. No
assertion: the numbers go to docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import threading

import grpc
from _lab import BenchLab, drive, percentile

from client_lib import LookasideChannel
from lookaside_registry import keys
from lookaside_registry.model import PoolConfig


class Errors:
    def __init__(self) -> None:
        self.lost = 0
        self._lock = threading.Lock()

    def count(self, exc: grpc.RpcError) -> None:
        assert exc.code() is grpc.StatusCode.DEADLINE_EXCEEDED, exc
        with self._lock:
            self.lost += 1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=40.0)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--timeout-ms", type=int, default=250)
    args = parser.parse_args()

    # Reports every second and a judgement every 2 s; one client, so its
    # reports alone may eject (min_reporters 1); everything else is the
    # pool defaults (a first ejection lasts 30 s).
    base = PoolConfig.from_flat(
        "", report_interval_ms=1000, outlier_interval_ms=2000, outlier_min_reporters=1
    )
    pools = {
        "off": base.updated(name="off", outlier_detection=False),
        "on": dataclasses.replace(base, name="on"),
    }
    with BenchLab(pools) as lab:
        for pool in pools:
            for i in range(4):
                lab.server(pool, *(("--blackhole-percent", "1") if i == 3 else ()))
        lab.wait_registered({p: 4 for p in pools})

        results = {}
        for pool in pools:
            channel = LookasideChannel(pool, lab.balancer)
            assert channel.wait_for_list(10)
            errors = Errors()
            latencies, qps = drive(
                channel, args.seconds, args.concurrency, args.timeout_ms / 1000, errors.count
            )
            lost = errors.lost
            channel.close()
            states = [json.loads(v)["state"] for v in lab.redis.hvals(keys.backends(pool))]
            total = len(latencies) + lost
            results[pool] = (
                lost / total,
                qps,
                len(latencies) / args.seconds,
                percentile(latencies, 0.99) * 1000,
                total,
                states.count("ejected"),
            )
        print(
            f"4 backends, one black-holing every call; {args.concurrency} calls in flight with "
            f"a {args.timeout_ms} ms deadline for {args.seconds:g}s per pool"
        )
        print(
            f"  {'outliers':9s} {'lost':>7s} {'calls/s':>8s} {'ok/s':>8s} {'ok p99 ms':>10s} "
            f"{'calls':>7s} {'ejected at end':>15s}"
        )
        for pool, (share, qps, ok, p99, n, ejected) in results.items():
            print(f"  {pool:9s} {share:7.2%} {qps:8.1f} {ok:8.1f} {p99:10.2f} {n:7d} {ejected:15d}")
        off, on = results["off"], results["on"]
        print(
            f"  ratios (on / off): lost share {on[0] / off[0]:.3f}x, "
            f"successful calls/s {on[2] / off[2]:.2f}x"
        )


if __name__ == "__main__":
    main()
