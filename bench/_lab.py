"""Processes for the benchmarks that need a whole balancer: a private
Redis, one balancer process, pools configured up front, and demo routeguide
servers that register themselves.

    with BenchLab({"rr": PoolConfig(name="rr")}) as lab:
        lab.server("rr", "--delay-ms", "5")
        lab.wait_registered({"rr": 1})
        channel = LookasideChannel("rr", lab.balancer)
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from types import TracebackType

import grpc
import grpc.aio
import redis

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from lookaside.redis_process import RedisProcess, free_port  # noqa: E402
from lookaside_proto.routeguide.v1 import route_guide_pb2 as rg  # noqa: E402
from lookaside_proto.routeguide.v1 import route_guide_pb2_grpc as rg_grpc  # noqa: E402
from lookaside_registry import keys  # noqa: E402
from lookaside_registry.model import PoolConfig  # noqa: E402
from lookaside_registry.store import RegistryStore  # noqa: E402


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


def drive(
    channel: grpc.Channel,
    seconds: float,
    concurrency: int,
    timeout: float = 10.0,
    on_error: Callable[[grpc.RpcError], None] | None = None,
) -> tuple[list[float], float]:
    """Keeps `concurrency` GetFeature calls in flight for `seconds`; returns
    the latencies of the calls that succeeded and the calls per second
    (failed ones included). Errors go to on_error, or are raised."""
    stub = rg_grpc.RouteGuideStub(channel)
    latencies: list[list[float]] = [[] for _ in range(concurrency)]
    counts = [0] * concurrency
    stop_at = time.perf_counter() + seconds

    def worker(i: int) -> None:
        point = rg.Point(latitude=409146138, longitude=-746188906)
        while time.perf_counter() < stop_at:
            t0 = time.perf_counter()
            counts[i] += 1
            try:
                stub.GetFeature(point, timeout=timeout)
            except grpc.RpcError as exc:
                if on_error is None:
                    raise
                on_error(exc)
                continue
            latencies[i].append(time.perf_counter() - t0)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(concurrency)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - start
    return [x for chunk in latencies for x in chunk], sum(counts) / elapsed


def _wait(p: subprocess.Popen[bytes]) -> None:
    try:
        p.wait(15)
    except subprocess.TimeoutExpired:
        p.kill()


class RawStreams:
    """BalanceLoad streams of one grpc.aio client process, as raw bytes, one
    HTTP/2 connection per `per_connection` streams."""

    METHOD = "/grpc.lb.v1.LoadBalancer/BalanceLoad"

    def __init__(self, balancer: str, pool: str, streams: int, per_connection: int) -> None:
        from lookaside_proto.lb.v1 import load_balancer_pb2 as lb

        self.first = lb.LoadBalanceRequest(
            initial_request=lb.InitialLoadBalanceRequest(name=pool)
        ).SerializeToString()
        self.streams = streams
        self.channels = [
            grpc.aio.insecure_channel(balancer, options=[("grpc.use_local_subchannel_pool", 1)])
            for _ in range(max(1, -(-streams // per_connection)))
        ]
        self.calls: list[grpc.aio.StreamStreamCall] = []
        self.refusals: Counter[str] = Counter()

    async def _open(self, i: int) -> grpc.aio.StreamStreamCall | None:
        call = self.channels[i % len(self.channels)].stream_stream(self.METHOD)()
        try:
            await call.write(self.first)
            await call.read()  # the initial response
            await call.read()  # the first list
        except grpc.aio.AioRpcError as exc:
            self.refusals[f"{exc.code().name}: {exc.details()}"] += 1
            return None
        return call

    async def open(self) -> float:
        """Opens every stream at once and waits for each one's first list
        (or refusal); returns the seconds that took."""
        start = time.perf_counter()
        opened = await asyncio.gather(*(self._open(i) for i in range(self.streams)))
        self.calls = [c for c in opened if c is not None]
        return time.perf_counter() - start

    async def close(self) -> None:
        for call in self.calls:
            call.cancel()
        for ch in self.channels:
            await ch.close()


class BenchLab:
    def __init__(
        self,
        pools: dict[str, PoolConfig],
        *,
        metrics: bool = False,
        args: tuple[str, ...] = (),
        workers: int = 1,
    ) -> None:
        self.pools = pools
        self.args = args  # more flags for the balancer
        self.workers = workers  # balancer worker processes (--workers)
        self.procs: list[subprocess.Popen[bytes]] = []
        self.redis_process = RedisProcess()
        self.balancer = ""
        # The balancer's /metrics address, when asked for.
        self.metrics = f"127.0.0.1:{free_port()}" if metrics else ""

    def __enter__(self) -> BenchLab:
        self.redis_process.__enter__()
        url = self.redis_process.url
        self.redis = redis.Redis.from_url(url)
        try:
            self.balancer = f"127.0.0.1:{free_port()}"
            self.procs.append(subprocess.Popen(
                [sys.executable, "-m", "lookaside", "balancer", "--listen", self.balancer,
                 "--redis-url", url, "--metrics-listen", self.metrics, "--log-level", "warning",
                 "--insecure-registration", "--workers", str(self.workers), *self.args],
            ))  # fmt: skip

            async def configure() -> None:
                store = RegistryStore.from_url(url)
                for config in self.pools.values():
                    await store.put_pool(config)
                await store.close()

            asyncio.run(configure())
            ready = grpc.insecure_channel(self.balancer)
            grpc.channel_ready_future(ready).result(timeout=20)
            ready.close()
            # Every worker serving before the clients connect (the kernel
            # spreads connections over the workers listening then).
            deadline = time.monotonic() + 60
            while self.workers > 1 and self.metrics and time.monotonic() < deadline:
                if self.metric("lookaside_balancer_workers") >= self.workers:
                    break
                time.sleep(0.2)
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def metric(self, name: str, **labels: str) -> float:
        """One sample from the balancer's /metrics (0 when absent); with
        workers, the sum of the workers' samples."""
        return sum(self.per_worker(name, **labels).values())

    def per_worker(self, name: str, **labels: str) -> dict[str, float]:
        """One sample from the balancer's /metrics by its worker label ("" for
        a balancer without workers, or the supervisor's own samples)."""
        import urllib.request

        from prometheus_client.parser import text_string_to_metric_families

        with urllib.request.urlopen(f"http://{self.metrics}/metrics", timeout=10) as r:
            text = r.read().decode()
        found: dict[str, float] = {}
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                own = {k: v for k, v in sample.labels.items() if k != "worker"}
                if sample.name == name and own == labels:
                    worker = sample.labels.get("worker", "")
                    found[worker] = found.get(worker, 0.0) + float(sample.value)
        return found

    def server(self, pool: str, *flags: str) -> None:
        """Starts a demo routeguide server that registers in `pool`."""
        self.procs.append(subprocess.Popen(
            [sys.executable, "-m", "lookaside", "routeguide", "server",
             "--listen", f"127.0.0.1:{free_port()}", "--balancer", self.balancer, "--pool", pool,
             "--log-level", "warning", *flags],
            stdout=subprocess.DEVNULL,
        ))  # fmt: skip

    def wait_registered(self, counts: dict[str, int], timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while any(self.redis.hlen(keys.backends(p)) < n for p, n in counts.items()):
            if time.monotonic() > deadline:
                raise SystemExit("backends did not register")
            time.sleep(0.1)

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        # Servers first, so they can drain and deregister; the balancer last.
        servers, balancer = self.procs[1:], self.procs[:1]
        for group in (servers, balancer):
            for p in group:
                p.terminate()
            for p in group:
                _wait(p)
        self.redis.close()
        self.redis_process.__exit__(exc_type, exc, tb)
