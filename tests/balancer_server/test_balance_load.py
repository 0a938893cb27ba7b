"""BalanceLoad against a stock grpcio stub: lists, pushes, and refusals."""

from __future__ import annotations

import queue

import grpc
import pytest

from lookaside_proto.lb.v1 import load_balancer_pb2 as lb
from lookaside_registry.model import DropRate, PoolConfig
from tests.support import STOP, BalancerHandle, LbStream, wait_until


def register(balancer: BalancerHandle, pool: str, port: int, **kw) -> str:  # type: ignore[no-untyped-def]
    lease = balancer.run(
        balancer.store.register(pool=pool, host="127.0.0.1", ip="127.0.0.1", port=port, **kw)
    )
    return lease.backend_id


def test_initial_response_then_list_with_tokens(balancer: BalancerHandle, pool_name: str) -> None:
    balancer.run(balancer.store.put_pool(PoolConfig(name=pool_name, report_interval_ms=2500)))
    ids = [register(balancer, pool_name, p) for p in (9001, 9002, 9003)]
    stream = LbStream(balancer.address, pool_name)
    try:
        first = stream.next()
        assert first.HasField("initial_response")
        assert first.initial_response.client_stats_report_interval.ToMilliseconds() == 2500
        # (a list from before the last registrations reached the balancer may come first)
        entries = stream.list_where(lambda entries: len(entries) == 3)
        assert sorted(a for a, _, _ in entries) == [
            "127.0.0.1:9001",
            "127.0.0.1:9002",
            "127.0.0.1:9003",
        ]
        epoch = balancer.server.epoch
        assert {t for _, t, _ in entries} == {f"{i}.{epoch}" for i in ids}
        assert all(len(t.encode()) < 50 for _, t, _ in entries)
    finally:
        stream.close()


def test_list_pushed_on_change_and_identical_list_not_resent(
    balancer: BalancerHandle, pool_name: str
) -> None:
    register(balancer, pool_name, 9101)
    stream = LbStream(balancer.address, pool_name)
    try:
        stream.next()  # initial response
        assert [a for a, _, _ in stream.next_list()] == ["127.0.0.1:9101"]
        register(balancer, pool_name, 9102)
        assert sorted(a for a, _, _ in stream.next_list()) == ["127.0.0.1:9101", "127.0.0.1:9102"]
        # Re-registering bumps the version but the list is the same: nothing sent.
        register(balancer, pool_name, 9102)
        # A real change after it is the very next message on the stream.
        register(balancer, pool_name, 9103)
        nxt = stream.next()
        assert nxt.HasField("server_list")
        assert len(nxt.server_list.servers) == 3
    finally:
        stream.close()


@pytest.mark.parametrize(
    ("name", "pool"),
    [
        ("{pool}", "{pool}"),
        ("{pool}:50051", "{pool}"),
        ("{pool}.lookaside.test:50051", "{pool}"),
        ("{pool}.lookaside.test", "{pool}"),
    ],
)
def test_service_name_maps_to_pool(
    balancer: BalancerHandle, pool_name: str, name: str, pool: str
) -> None:
    register(balancer, pool.format(pool=pool_name), 9201)
    stream = LbStream(balancer.address, name.format(pool=pool_name))
    try:
        stream.next()
        assert [a for a, _, _ in stream.next_list()] == ["127.0.0.1:9201"]
    finally:
        stream.close()


def test_exact_name_wins_over_first_label(balancer: BalancerHandle, pool_name: str) -> None:
    full = f"{pool_name}.other.test"
    register(balancer, pool_name, 9301)
    register(balancer, full, 9302)
    # Both loaded: the first list is the exact pool's. (A stream opened before
    # the exact pool is loaded moves to it: test_streams_follow.py.)
    wait_until(lambda: balancer.server.watcher.get(full) is not None)
    stream = LbStream(balancer.address, f"{full}:443")
    try:
        stream.next()
        assert [a for a, _, _ in stream.next_list()] == ["127.0.0.1:9302"]
    finally:
        stream.close()


def test_unknown_pool_waits_and_gets_the_list_when_it_appears(
    balancer: BalancerHandle, pool_name: str
) -> None:
    stream = LbStream(balancer.address, f"{pool_name}.lookaside.test:50051")
    try:
        assert stream.next().HasField("initial_response")
        with pytest.raises(queue.Empty):
            stream.next(timeout=0.5)  # no list, and certainly no empty one
        register(balancer, pool_name, 9401)
        assert [a for a, _, _ in stream.next_list()] == ["127.0.0.1:9401"]
    finally:
        stream.close()


def test_drop_entries_and_fallback(balancer: BalancerHandle, pool_name: str) -> None:
    register(balancer, pool_name, 9501)
    balancer.run(
        balancer.store.put_pool(PoolConfig(name=pool_name, drops=(DropRate("load_shed", 250),)))
    )
    stream = LbStream(balancer.address, pool_name)
    try:
        stream.next()
        entries = stream.next_list()
        assert len(entries) == 4
        assert [(a, t) for a, t, d in entries if d] == [("", "load_shed")]
        balancer.run(balancer.store.put_pool(PoolConfig(name=pool_name, fallback=True)))
        while True:
            response = stream.next()
            if response.HasField("fallback_response"):
                break
        balancer.run(balancer.store.put_pool(PoolConfig(name=pool_name)))
        assert [a for a, _, _ in stream.next_list()] == ["127.0.0.1:9501"]
    finally:
        stream.close()


def _refused(balancer: BalancerHandle, first: object) -> grpc.RpcError:
    stream = LbStream(balancer.address, first=first)
    try:
        with pytest.raises(grpc.RpcError) as info:
            stream.next()  # the stream must end before any response
        return info.value
    finally:
        stream.close()


@pytest.mark.parametrize(
    ("first", "details"),
    [
        (
            lb.LoadBalanceRequest(client_stats=lb.ClientStats()),
            "must be an initial_request, got client_stats",
        ),
        (lb.LoadBalanceRequest(), "must be an initial_request, got an empty request"),
        (
            lb.LoadBalanceRequest(initial_request=lb.InitialLoadBalanceRequest(name="")),
            "name is empty",
        ),
        (
            lb.LoadBalanceRequest(initial_request=lb.InitialLoadBalanceRequest(name="a" * 256)),
            "256 bytes; at most 255",
        ),
        (
            lb.LoadBalanceRequest(initial_request=lb.InitialLoadBalanceRequest(name="bad name/x")),
            "is not a service name",
        ),
    ],
)
def test_bad_first_message_is_refused_before_any_response(
    balancer: BalancerHandle, first: lb.LoadBalanceRequest, details: str
) -> None:
    error = _refused(balancer, first)
    assert error.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert details in error.details()


def test_name_of_255_bytes_is_accepted(balancer: BalancerHandle) -> None:
    stream = LbStream(balancer.address, "a" * 255)
    try:
        assert stream.next().HasField("initial_response")
    finally:
        stream.close()


def test_malformed_bytes_are_refused(balancer: BalancerHandle) -> None:
    channel = grpc.insecure_channel(balancer.address)
    try:
        raw = channel.stream_stream("/grpc.lb.v1.LoadBalancer/BalanceLoad")
        with pytest.raises(grpc.RpcError) as info:
            list(raw(iter([b"\xff\xff\xff\xff"]), timeout=10))
        assert info.value.code() is grpc.StatusCode.INVALID_ARGUMENT
        assert "malformed LoadBalanceRequest" in info.value.details()
    finally:
        channel.close()


def test_health_and_reflection_are_served(balancer: BalancerHandle) -> None:
    from grpc_health.v1 import health_pb2, health_pb2_grpc
    from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

    channel = grpc.insecure_channel(balancer.address)
    try:
        health = health_pb2_grpc.HealthStub(channel)
        ads = "envoy.service.discovery.v3.AggregatedDiscoveryService"
        for service in ("", "grpc.lb.v1.LoadBalancer", ads):
            reply = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
            assert reply.status == health_pb2.HealthCheckResponse.SERVING
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        request = reflection_pb2.ServerReflectionRequest(list_services="")
        reply = next(stub.ServerReflectionInfo(iter([request]), timeout=5))
        names = {s.name for s in reply.list_services_response.service}
        assert {"grpc.lb.v1.LoadBalancer", "lookaside.registry.v1.Registry", ads} <= names
    finally:
        channel.close()


def test_half_close_ends_the_stream_with_ok(balancer: BalancerHandle, pool_name: str) -> None:
    register(balancer, pool_name, 9901)
    stream = LbStream(balancer.address, pool_name)
    try:
        stream.next()
        assert [a for a, _, _ in stream.next_list()] == ["127.0.0.1:9901"]
        stream.requests.put(STOP)  # half-close: the request side ends, no cancel
        with pytest.raises(EOFError):
            stream.next()
        assert stream.error is None
        assert stream.call.code() is grpc.StatusCode.OK
    finally:
        stream.close()


def test_fanout_metric_counts_one_update_once_all_open_streams_have_it(
    balancer: BalancerHandle, pool_name: str
) -> None:
    from balancer_server import metrics

    def fanouts() -> float:
        value = metrics.REGISTRY.get_sample_value(
            "lookaside_balancer_fanout_seconds_count", {"pool": pool_name}
        )
        return value or 0.0

    register(balancer, pool_name, 9301, lease_ttl_ms=60_000)
    # Streams opened before the balancer has the pool would count its
    # first list as a fan-out.
    wait_until(lambda: balancer.server.watcher.get(pool_name) is not None)
    streams = [LbStream(balancer.address, pool_name) for _ in range(3)]
    try:
        for s in streams:
            assert len(s.next_list()) == 1
        # The first list went to streams as they opened: no fan-out yet.
        assert fanouts() == 0
        register(balancer, pool_name, 9302, lease_ttl_ms=60_000)
        for s in streams:
            assert len(s.next_list()) == 2
        wait_until(lambda: fanouts() == 1)
        # A stream that opens now gets the current list, and is no fan-out.
        late = LbStream(balancer.address, pool_name)
        assert len(late.next_list()) == 2
        register(balancer, pool_name, 9303, lease_ttl_ms=60_000)
        for s in [*streams, late]:
            assert len(s.next_list()) == 3
        wait_until(lambda: fanouts() == 2)
        late.close()
    finally:
        for s in streams:
            s.close()


def test_a_fanout_starts_every_write_itself_and_keeps_the_collector_out(
    balancer: BalancerHandle, pool_name: str
) -> None:
    """One pass over the pool's streams starts every write: no task per
    stream (the baseline made one per stream and list), and the cyclic
    garbage collector is off from the pass until the last write is done."""
    import asyncio
    import gc

    from balancer_server.feeds import GC_HOLD

    register(balancer, pool_name, 9401, lease_ttl_ms=60_000)
    wait_until(lambda: balancer.server.watcher.get(pool_name) is not None)
    streams = [LbStream(balancer.address, pool_name) for _ in range(30)]
    created: list[str] = []
    gc_during: list[bool] = []

    async def count_tasks() -> None:
        loop = asyncio.get_running_loop()

        def factory(loop, coro, **kw):  # type: ignore[no-untyped-def]
            created.append(getattr(coro, "__qualname__", repr(coro)))
            gc_during.append(gc.isenabled())
            return asyncio.Task(coro, loop=loop, **kw)

        loop.set_task_factory(factory)

    async def no_factory() -> None:
        asyncio.get_running_loop().set_task_factory(None)

    try:
        for s in streams:
            assert len(s.next_list()) == 1
        held = GC_HOLD.held
        balancer.run(count_tasks())
        try:
            register(balancer, pool_name, 9402, lease_ttl_ms=60_000)
            for s in streams:
                assert len(s.next_list()) == 2
        finally:
            balancer.run(no_factory())
        # The registration, the watcher's reload and the probes of the new
        # backend make tasks; the 30 writes make none.
        writes = [name for name in created if name.endswith(".write")]
        assert writes == [], created
        assert GC_HOLD.held == held + 1
        wait_until(lambda: not GC_HOLD.holding)
        assert gc.isenabled()
    finally:
        for s in streams:
            s.close()
