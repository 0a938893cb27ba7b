"""The least_loaded policy: weights follow the latency backends report,
with smoothing and hysteresis; and graceful drain."""

from __future__ import annotations

import concurrent.futures
import threading
import time
from collections import Counter

import grpc

from client_lib import LoadMeter, LookasideChannel, Registration
from lookaside_proto.routeguide.v1 import route_guide_pb2 as rg
from lookaside_proto.routeguide.v1 import route_guide_pb2_grpc as rg_grpc
from lookaside_registry import keys
from lookaside_registry.model import PoolConfig
from tests.support import BalancerHandle, LbStream, RouteGuideBackend, wait_until


def test_slower_backends_get_a_smaller_share(
    balancer: BalancerHandle, pool_name: str, redis_client
) -> None:  # type: ignore[no-untyped-def]
    balancer.run(balancer.store.put_pool(PoolConfig(name=pool_name, policy="least_loaded")))
    leases = [
        balancer.run(
            balancer.store.register(pool=pool_name, host="h", ip="127.0.0.1", port=9700 + i)
        )
        for i in range(3)
    ]
    stream = LbStream(balancer.address, pool_name)
    stream.next()
    stream.list_where(lambda entries: len(entries) == 3)  # no reports yet: plain weights

    def beat(i: int, latency: float) -> None:
        lease = leases[i]
        balancer.run(
            balancer.store.heartbeat(
                pool_name, lease.backend_id, lease.lease_id, {"latency_ms": latency}
            )
        )

    beat(0, 2.0)
    beat(1, 2.0)
    beat(2, 20.0)
    entries = stream.next_list()
    while Counter(a for a, _, _ in entries)["127.0.0.1:9702"] != 1 or len(entries) != 201:
        entries = stream.next_list()
    counts = Counter(a for a, _, _ in entries)
    assert counts == {"127.0.0.1:9700": 100, "127.0.0.1:9701": 100, "127.0.0.1:9702": 1}

    # Noise (a 10% move) changes nothing: no version bump, no new list.
    version = int(redis_client.get(keys.version(pool_name)))
    beat(0, 2.2)
    beat(2, 19.0)
    assert int(redis_client.get(keys.version(pool_name))) == version

    # A real change (the slow one recovers) moves its share back up; the
    # smoothing and the 20% hysteresis stop it just short of an exact tie.
    for _ in range(6):
        beat(2, 2.0)
    entries = stream.next_list()
    while Counter(a for a, _, _ in entries)["127.0.0.1:9702"] < 30:
        entries = stream.next_list()
    counts = Counter(a for a, _, _ in entries)
    assert counts["127.0.0.1:9700"] == counts["127.0.0.1:9701"] == 100
    stream.close()


def test_round_robin_pool_ignores_latency(
    balancer: BalancerHandle, pool_name: str, redis_client
) -> None:  # type: ignore[no-untyped-def]
    lease = balancer.run(
        balancer.store.register(pool=pool_name, host="h", ip="127.0.0.1", port=9710)
    )
    version = int(redis_client.get(keys.version(pool_name)))
    balancer.run(
        balancer.store.heartbeat(pool_name, lease.backend_id, lease.lease_id, {"latency_ms": 50.0})
    )
    assert int(redis_client.get(keys.version(pool_name))) == version
    assert '"latency_ms":50' in redis_client.hget(keys.backends(pool_name), lease.backend_id)


class SlowBackend(RouteGuideBackend):
    """GetFeature waits until released: a call we can hold in flight."""

    def __init__(self) -> None:
        super().__init__()
        self.release = threading.Event()
        self.entered = threading.Event()

    def GetFeature(self, request, context):  # type: ignore[no-untyped-def]  # noqa: N802
        if request.latitude == 1:
            self.entered.set()
            self.release.wait(20)
        return super().GetFeature(request, context)


def test_graceful_drain_order(balancer: BalancerHandle, pool_name: str) -> None:
    """Shutdown drains first (the backend leaves the list, its lease kept),
    waits for the in-flight call, then deregisters."""
    meter = LoadMeter()
    slow = SlowBackend()
    slow.server = grpc.server(
        concurrent.futures.ThreadPoolExecutor(max_workers=8), interceptors=[meter.interceptor()]
    )
    rg_grpc.add_RouteGuideServicer_to_server(slow, slow.server)
    slow.port = slow.server.add_insecure_port("127.0.0.1:0")
    slow.name = f"127.0.0.1:{slow.port}"
    slow.server.start()
    other = RouteGuideBackend().start()
    try:
        registration = Registration(
            balancer.address, pool_name, slow.port, host="127.0.0.1", meter=meter, drain_delay=0.2
        ).start()
        balancer.run(
            balancer.store.register(pool=pool_name, host="h", ip="127.0.0.1", port=other.port)
        )
        with LookasideChannel(pool_name, balancer.address) as channel:
            wait_until(lambda: len(channel.backends()) == 2)
            stub = rg_grpc.RouteGuideStub(channel)
            # Route a held call to the slow backend.
            held: dict[str, object] = {}
            direct = grpc.insecure_channel(slow.name)

            def call() -> None:
                held["reply"] = rg_grpc.RouteGuideStub(direct).GetFeature(
                    rg.Point(latitude=1), timeout=30
                )

            t = threading.Thread(target=call)
            t.start()
            assert slow.entered.wait(10)
            assert meter.in_flight == 1
            stopper = threading.Thread(target=registration.stop)
            stopper.start()
            # It leaves the list while the call is still in flight...
            wait_until(lambda: {a for a, _ in channel.backends()} == {f"127.0.0.1:{other.port}"})
            events = balancer.run(balancer.store.events(pool_name))
            assert events[0]["kind"] == "draining"
            # ...and is not deregistered until that call ends.
            time.sleep(0.5)
            assert stopper.is_alive()
            assert all(
                e["kind"] != "deregistered" for e in balancer.run(balancer.store.events(pool_name))
            )
            before = slow.calls
            for _ in range(10):
                stub.GetFeature(rg.Point())
            assert slow.calls == before  # no new calls while draining
            slow.release.set()
            t.join(10)
            stopper.join(10)
            assert held["reply"].name == slow.name  # type: ignore[attr-defined]
            direct.close()
            kinds = [e["kind"] for e in balancer.run(balancer.store.events(pool_name))]
            assert kinds.index("deregistered") < kinds.index("draining")  # newest first
    finally:
        slow.release.set()
        slow.stop()
        other.stop()


def test_load_meter_figures() -> None:
    meter = LoadMeter()
    t0 = meter.begin()
    t1 = meter.begin()
    assert meter.in_flight == 2
    meter.end(t0)
    meter.end(t1)
    figures = meter.snapshot()
    assert figures["in_flight"] == 0
    assert figures["qps"] > 0
    assert figures["latency_ms"] >= 0
    assert meter.snapshot()["latency_ms"] == 0.0  # nothing since the last one
