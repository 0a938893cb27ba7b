"""A backend SIGKILLed under steady load: real backend processes (the demo
server, self-registered), a real balancer and Redis. The thin clients (sync
and asyncio, 1 and 8 calls in flight) lose no call; a stock grpcio channel
through the DNS responder runs the same scenario for comparison.

Without a retry policy a call already sent to the backend when it died
fails (gRFC A6 forbids retrying it unasked), for the stock client too;
with the same retryPolicy for the idempotent GetFeature (the service
config stock grpcio takes), no call fails, thin or stock.

Each run prints a `kill-under-load:` row (client kind, retries, in flight,
calls, failed); run with -s to see the table.
"""

from __future__ import annotations

import asyncio
import json
import signal
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from client_lib import LookasideChannel
from client_lib.aio import LookasideAioChannel
from lookaside.chaos.load import RETRY_POLICY  # the same policy as the chaos clients
from lookaside_proto.routeguide.v1 import route_guide_pb2 as rg
from lookaside_proto.routeguide.v1 import route_guide_pb2_grpc as rg_grpc
from tests.client_lib.scripted import demo_backends
from tests.demo.conftest import DemoServerProcess
from tests.interop.conftest import dns_factory, stock_channel  # noqa: F401 - fixtures
from tests.support import BalancerHandle, LoopThread, wait_until

BEFORE_KILL = 300  # calls made before the kill
AFTER_KILL = 900  # calls made after it

RETRIES = {"no retry policy": False, "retryPolicy": True}


def thin_options(retries: bool) -> list[tuple[str, str]]:
    if not retries:
        return []
    return [("grpc.service_config", json.dumps({"methodConfig": [RETRY_POLICY]}))]


class Load:
    """Counts calls and failures; `kill` runs once BEFORE_KILL calls are done."""

    def __init__(self, kill: Callable[[], None], channel: Any = None, victim: str = "") -> None:
        self.lock = threading.Lock()
        self.calls = 0
        self.failed: Counter[str] = Counter()
        self.late: list[str] = []  # failures of calls started after the client saw the death
        self.kill = kill
        self.killed = threading.Event()
        self.down_at: float | None = None
        if channel is not None:
            threading.Thread(target=self._watch, args=(channel, victim), daemon=True).start()

    def _watch(self, channel: Any, victim: str) -> None:
        """Notes when the thin client's picker stopped holding the victim as
        READY (read under the core's lock, so the picker is already swapped)."""
        self.killed.wait(60)
        while True:
            with channel._core.lock:
                if channel.backend_states().get(victim) is not grpc.ChannelConnectivity.READY:
                    self.down_at = time.monotonic()
                    return
            time.sleep(0.001)

    def record(self, error: str | None, started: float) -> bool:
        """Returns False once enough calls were made."""
        with self.lock:
            self.calls += 1
            if error is not None:
                self.failed[error] += 1
                if self.down_at is not None and started > self.down_at:
                    self.late.append(error)
            kill_now = self.calls == BEFORE_KILL
            more = self.calls < BEFORE_KILL + AFTER_KILL
        if kill_now:
            self.kill()
            self.killed.set()
        return more


@pytest.fixture
def three_backends(
    balancer: BalancerHandle, pool_name: str, tmp_path: Path
) -> Iterator[list[DemoServerProcess]]:
    with demo_backends(balancer.address, pool_name, tmp_path) as procs:
        yield procs


def _sigkill(proc: DemoServerProcess) -> Callable[[], None]:
    return lambda: proc.proc.send_signal(signal.SIGKILL)


def _sync_load(stub: rg_grpc.RouteGuideStub, in_flight: int, load: Load) -> None:
    def worker() -> None:
        more = True
        while more:
            started = time.monotonic()
            try:
                stub.GetFeature(rg.Point(), timeout=5)
                more = load.record(None, started)
            except grpc.RpcError as exc:
                more = load.record(f"{exc.code().name}: {exc.details()}", started)

    threads = [threading.Thread(target=worker) for _ in range(in_flight)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)


def assert_no_call_failed_for_want_of_a_backend(load: Load) -> None:
    """A call that never left is retried (so none fails with "failed to
    connect"), and no call started after the client saw the backend go down
    fails. What may fail is a call already sent to the backend when it died
    (in flight, or written before the client's transport saw the reset),
    which gRFC A6 forbids retrying: the backend may have run it. The stock
    client loses those too (the comparison run)."""
    assert load.down_at is not None
    assert load.late == [], load.late
    assert all("failed to connect" not in e for e in load.failed), load.failed


def assert_outcome(load: Load, retries: bool) -> None:
    assert load.killed.is_set() and load.calls >= BEFORE_KILL + AFTER_KILL
    assert_no_call_failed_for_want_of_a_backend(load)
    if retries:
        assert not load.failed, load.failed


def _report(kind: str, in_flight: int, load: Load, retries: bool = False) -> None:
    failed = sum(load.failed.values())
    policy = "retryPolicy" if retries else "no retry policy"
    print(
        f"\nkill-under-load: {kind} | {policy} | in_flight={in_flight}"
        f" calls={load.calls} failed={failed}"
    )
    for error, n in load.failed.most_common(3):
        print(f"    {n} x {error}")


@pytest.mark.parametrize("retries", RETRIES.values(), ids=RETRIES)
@pytest.mark.parametrize("in_flight", [1, 8])
def test_sync_thin_client_loses_no_call(
    three_backends, pool_name, balancer, in_flight, retries
) -> None:  # type: ignore[no-untyped-def]
    with LookasideChannel(pool_name, balancer.address, options=thin_options(retries)) as channel:
        wait_until(lambda: len(channel.backends()) == 3 and channel.wait_for_list(0))
        wait_until(
            lambda: all(
                s is grpc.ChannelConnectivity.READY for s in channel.backend_states().values()
            )
        )
        load = Load(_sigkill(three_backends[0]), channel, three_backends[0].address)
        _sync_load(rg_grpc.RouteGuideStub(channel), in_flight, load)
    _report("thin sync", in_flight, load, retries)
    assert_outcome(load, retries)


@pytest.mark.parametrize("retries", RETRIES.values(), ids=RETRIES)
@pytest.mark.parametrize("in_flight", [1, 8])
def test_aio_thin_client_loses_no_call(
    three_backends, pool_name, balancer, in_flight, retries
) -> None:  # type: ignore[no-untyped-def]
    loop = LoopThread("aio-load")
    load = Load(_sigkill(three_backends[0]))

    async def run() -> None:
        opts = thin_options(retries)
        async with LookasideAioChannel(pool_name, balancer.address, options=opts) as channel:
            stub = rg_grpc.RouteGuideStub(channel)
            threading.Thread(
                target=load._watch, args=(channel, three_backends[0].address), daemon=True
            ).start()

            async def worker() -> None:
                more = True
                while more:
                    started = time.monotonic()
                    try:
                        await stub.GetFeature(rg.Point(), timeout=5)
                        more = load.record(None, started)
                    except grpc.aio.AioRpcError as exc:
                        more = load.record(f"{exc.code().name}: {exc.details()}", started)

            async def all_ready() -> None:
                while len(channel.backend_states()) < 3 or not all(
                    s is grpc.ChannelConnectivity.READY for s in channel.backend_states().values()
                ):
                    await asyncio.sleep(0.02)

            await asyncio.wait_for(all_ready(), 10)
            await asyncio.wait_for(asyncio.gather(*(worker() for _ in range(in_flight))), 120)

    try:
        loop.run(run(), 150)
    finally:
        loop.close()
    _report("thin asyncio", in_flight, load, retries)
    assert_outcome(load, retries)


@pytest.mark.parametrize("retries", RETRIES.values(), ids=RETRIES)
@pytest.mark.parametrize("in_flight", [1, 8])
def test_stock_grpcio_through_dns_for_comparison(
    three_backends,
    pool_name,
    balancer,
    dns_factory,  # noqa: F811 - the fixture imported above
    stock_channel,  # noqa: F811
    in_flight,
    retries,
) -> None:  # type: ignore[no-untyped-def]
    dns = dns_factory(balancer)
    config: dict[str, Any] = {"loadBalancingConfig": [{"grpclb": {}}]}
    if retries:
        config["methodConfig"] = [RETRY_POLICY]
    channel: Any = stock_channel(dns, pool_name, 1, service_config=json.dumps(config))
    stub = rg_grpc.RouteGuideStub(channel)
    served: set[str] = set()

    def spread() -> bool:
        _, call = stub.GetFeature.with_call(rg.Point(), timeout=5)
        md = dict((*call.initial_metadata(), *call.trailing_metadata()))
        served.add(str(md.get("x-served-by")))
        return len(served) == 3

    wait_until(spread, timeout=20)
    load = Load(_sigkill(three_backends[0]))
    _sync_load(stub, in_flight, load)
    _report("stock grpcio (grpclb via DNS)", in_flight, load, retries)
    # A comparison run: the stock client's count is reported, not judged;
    # the run itself must have happened, with the kill in the middle.
    assert load.killed.is_set() and load.calls >= BEFORE_KILL + AFTER_KILL
