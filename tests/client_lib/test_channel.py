"""LookasideChannel (sync) against a real balancer, Redis and backends."""

from __future__ import annotations

import threading
import time

import grpc
import pytest

from client_lib import LookasideChannel, Registration
from lookaside_proto.registry.v1 import registry_pb2 as pb
from lookaside_proto.registry.v1 import registry_pb2_grpc as pb_grpc
from lookaside_proto.routeguide.v1 import route_guide_pb2 as rg
from lookaside_proto.routeguide.v1 import route_guide_pb2_grpc as rg_grpc
from lookaside_registry import keys
from lookaside_registry.model import DropRate, PoolConfig
from tests.support import BalancerHandle, register_all, start_backends, wait_until


def addresses(channel: LookasideChannel) -> set[str]:
    return {a for a, _ in channel.backends() if a}


def ready(channel: LookasideChannel) -> set[str]:
    """The listed backends whose sub-channel is READY (only those get calls)."""
    return {a for a, s in channel.backend_states().items() if s is grpc.ChannelConnectivity.READY}


def test_300_calls_spread_100_each_with_own_tokens(
    balancer: BalancerHandle, backends, pool_name: str
) -> None:  # type: ignore[no-untyped-def]
    three = start_backends(backends, 3)
    ids = register_all(balancer, pool_name, three)
    with LookasideChannel(f"{pool_name}.lookaside.test:50051", balancer.address) as channel:
        assert channel.wait_for_list(10)
        wait_until(lambda: len(ready(channel)) == 3)
        stub = rg_grpc.RouteGuideStub(channel)
        names = [stub.GetFeature(rg.Point(latitude=i)).name for i in range(300)]
    for b in three:
        assert names.count(b.name) == 100
        assert b.calls == 100
        # Every call to a backend carried that backend's own token, and only it.
        assert dict(b.tokens) == {f"{ids[b.port]}.{balancer.server.epoch}": 100}


def test_streaming_rpcs_and_future(balancer: BalancerHandle, backends, pool_name: str) -> None:  # type: ignore[no-untyped-def]
    (b,) = start_backends(backends, 1)
    register_all(balancer, pool_name, [b])
    with LookasideChannel(pool_name, balancer.address) as channel:
        assert channel.wait_for_list(10)
        stub = rg_grpc.RouteGuideStub(channel)
        assert [f.name for f in stub.ListFeatures(rg.Rectangle())] == [
            f"{b.name}-{i}" for i in range(3)
        ]
        assert stub.RecordRoute(iter([rg.Point()] * 4)).point_count == 4
        notes = list(stub.RouteChat(iter([rg.RouteNote(message="hi")])))
        assert notes[0].message == f"{b.name}:hi"
        assert stub.GetFeature.future(rg.Point()).result(5).name == b.name
        response, call = stub.GetFeature.with_call(rg.Point())
        assert response.name == b.name and call.code() is grpc.StatusCode.OK
    assert sum(b.tokens.values()) == 5


def test_backends_join_leave_and_expire(balancer: BalancerHandle, backends, pool_name: str) -> None:  # type: ignore[no-untyped-def]
    first = start_backends(backends, 3)
    ids = register_all(balancer, pool_name, first)
    with LookasideChannel(pool_name, balancer.address) as channel:
        stub = rg_grpc.RouteGuideStub(channel)
        wait_until(lambda: len(ready(channel)) == 3)
        for _ in range(30):
            stub.GetFeature(rg.Point())

        # A 4th backend registers mid-run and starts receiving calls.
        (fourth,) = start_backends(backends, 1)
        register_all(balancer, pool_name, [fourth])
        wait_until(lambda: len(ready(channel)) == 4)
        for _ in range(40):
            stub.GetFeature(rg.Point())
        assert fourth.calls == 10

        # One deregisters and receives no more calls.
        gone = first[0]
        balancer.run(balancer.store.remove_backend(pool_name, ids[gone.port]))
        wait_until(lambda: f"127.0.0.1:{gone.port}" not in addresses(channel))
        before = gone.calls
        for _ in range(60):
            stub.GetFeature(rg.Point())
        assert gone.calls == before
        assert fourth.calls == 30

        # One stops heartbeating (a 1 s lease never renewed) and leaves after its TTL.
        (silent,) = start_backends(backends, 1)
        registry = grpc.insecure_channel(balancer.address)
        req = pb.RegisterRequest(pool=pool_name, host="127.0.0.1", port=silent.port)
        req.lease_ttl.FromSeconds(1)
        pb_grpc.RegistryStub(registry).Register(req, timeout=5)
        registry.close()
        wait_until(lambda: f"127.0.0.1:{silent.port}" in addresses(channel))
        wait_until(lambda: f"127.0.0.1:{silent.port}" not in addresses(channel), timeout=15)
        before = silent.calls
        for _ in range(30):
            stub.GetFeature(rg.Point())
        assert silent.calls == before


def test_client_stats_reach_redis_with_drops(
    balancer: BalancerHandle, backends, pool_name: str, redis_client
) -> None:  # type: ignore[no-untyped-def]
    two = start_backends(backends, 2)
    register_all(balancer, pool_name, two)
    balancer.run(
        balancer.store.put_pool(
            PoolConfig(
                name=pool_name, report_interval_ms=1000, drops=(DropRate("rate_limit", 200),)
            )
        )
    )
    with LookasideChannel(pool_name, balancer.address) as channel:
        stub = rg_grpc.RouteGuideStub(channel)
        # Calls queued while no backend is READY take a drop turn on every
        # try (as C-core's do): wait for READY backends to count exactly.
        wait_until(
            lambda: (
                sum(1 for a, t in channel.backends() if not a and t == "rate_limit") == 1
                and len(ready(channel)) == 2
            )
        )
        dropped = ok = 0
        for _ in range(100):
            try:
                stub.GetFeature(rg.Point())
                ok += 1
            except grpc.RpcError as exc:
                assert exc.code() is grpc.StatusCode.UNAVAILABLE
                assert exc.details() == "drop directed by grpclb balancer"
                dropped += 1
        assert (ok, dropped) == (80, 20)
        total = keys.load_total(pool_name)
        wait_until(lambda: redis_client.hget(total, "started") == "100", timeout=15)
        stats = redis_client.hgetall(total)
    assert stats["finished"] == "100"
    assert stats["known_received"] == "80"
    assert stats["drop:rate_limit"] == "20"
    assert stats.get("failed_to_send", "0") == "0"
    assert sum(b.calls for b in two) == 80


def test_failed_to_send_is_counted(
    balancer: BalancerHandle, backends, pool_name: str, redis_client
) -> None:  # type: ignore[no-untyped-def]
    (b,) = start_backends(backends, 1)
    balancer.run(balancer.store.put_pool(PoolConfig(name=pool_name, report_interval_ms=1000)))
    register_all(balancer, pool_name, [b])
    b.stop()  # listed, but nothing listens any more
    with LookasideChannel(pool_name, balancer.address) as channel:
        stub = rg_grpc.RouteGuideStub(channel)
        wait_until(lambda: len(addresses(channel)) == 1)
        for _ in range(5):
            with pytest.raises(grpc.RpcError) as info:
                stub.GetFeature(rg.Point(), timeout=5)
            assert info.value.code() is grpc.StatusCode.UNAVAILABLE
        total = keys.load_total(pool_name)
        wait_until(lambda: redis_client.hget(total, "finished") == "5", timeout=15)
    stats = redis_client.hgetall(total)
    assert stats["failed_to_send"] == "5"
    assert stats.get("known_received", "0") == "0"


def test_list_survives_balancer_loss(redis_url: str, backends, pool_name: str) -> None:  # type: ignore[no-untyped-def]
    balancer = BalancerHandle(redis_url)
    two = start_backends(backends, 2)
    register_all(balancer, pool_name, two)
    channel = LookasideChannel(pool_name, balancer.address)
    try:
        stub = rg_grpc.RouteGuideStub(channel)
        wait_until(lambda: len(ready(channel)) == 2)
        balancer.stop()
        names = {stub.GetFeature(rg.Point()).name for _ in range(20)}
        assert names == {b.name for b in two}
    finally:
        channel.close()


def test_several_balancers_and_reconnect(redis_url: str, backends, pool_name: str) -> None:  # type: ignore[no-untyped-def]
    """With two replicas listed, losing the one in use moves the stream to
    the other, which pushes later changes."""
    a = BalancerHandle(redis_url)
    b = BalancerHandle(redis_url)
    (one,) = start_backends(backends, 1)
    register_all(a, pool_name, [one])
    channel = LookasideChannel(pool_name, [a.address, b.address])
    try:
        wait_until(lambda: len(ready(channel)) == 1)
        a.stop()
        (two,) = start_backends(backends, 1)
        register_all(b, pool_name, [two])
        wait_until(lambda: len(ready(channel)) == 2, timeout=20)
        stub = rg_grpc.RouteGuideStub(channel)
        assert {stub.GetFeature(rg.Point()).name for _ in range(10)} == {one.name, two.name}
    finally:
        channel.close()
        b.stop()


def test_no_list_yet_fails_with_unavailable(balancer: BalancerHandle, pool_name: str) -> None:
    with LookasideChannel(pool_name, balancer.address, fallback_timeout=0.3) as channel:
        with pytest.raises(grpc.RpcError) as info:
            rg_grpc.RouteGuideStub(channel).GetFeature(rg.Point())
        assert info.value.code() is grpc.StatusCode.UNAVAILABLE
        assert "no server list" in info.value.details()


def test_registration_helper(
    balancer: BalancerHandle, backends, pool_name: str, redis_client
) -> None:  # type: ignore[no-untyped-def]
    (b,) = start_backends(backends, 1)
    with LookasideChannel(pool_name, balancer.address) as channel:
        with Registration(
            balancer.address, pool_name, b.port, host="127.0.0.1", lease_ttl=1.0
        ) as registration:
            assert registration.address == f"127.0.0.1:{b.port}"
            wait_until(lambda: ready(channel) == {f"127.0.0.1:{b.port}"})
            # Heartbeats keep it listed well past its 1 s TTL: the lease
            # expiry moves forward with each one.
            field = keys.backends(pool_name)
            first = redis_client.hget(field, registration.backend_id)
            wait_until(
                lambda: redis_client.hget(field, registration.backend_id) != first, timeout=5
            )
            # If the lease is lost, the helper registers again.
            redis_client.hdel(field, registration.backend_id)
            wait_until(lambda: registration.registrations == 2, timeout=5)
            assert redis_client.hget(field, registration.backend_id) is not None
        assert redis_client.hget(field, registration.backend_id) is None


def test_weights_1_2_3_over_6000_calls(balancer: BalancerHandle, backends, pool_name: str) -> None:  # type: ignore[no-untyped-def]
    three = start_backends(backends, 3)
    for b, weight in zip(three, (1, 2, 3), strict=True):
        balancer.run(
            balancer.store.register(
                pool=pool_name, host="127.0.0.1", ip="127.0.0.1", port=b.port, weight=weight
            )
        )
    with LookasideChannel(pool_name, balancer.address) as channel:
        wait_until(lambda: len(channel.backends()) == 6 and len(ready(channel)) == 3)
        stub = rg_grpc.RouteGuideStub(channel)
        names = [stub.GetFeature(rg.Point()).name for _ in range(6000)]
    for b, share in zip(three, (1 / 6, 2 / 6, 3 / 6), strict=True):
        assert abs(names.count(b.name) / 6000 - share) <= 0.02


def test_equal_weights_never_pick_one_backend_twice_in_a_row(
    balancer: BalancerHandle, backends, pool_name: str
) -> None:  # type: ignore[no-untyped-def]
    four = start_backends(backends, 4)
    register_all(balancer, pool_name, four)
    with LookasideChannel(pool_name, balancer.address) as channel:
        wait_until(lambda: len(ready(channel)) == 4)
        stub = rg_grpc.RouteGuideStub(channel)
        names = [stub.GetFeature(rg.Point()).name for _ in range(400)]
    assert all(a != b for a, b in zip(names, names[1:], strict=False))
    assert {names.count(b.name) for b in four} == {100}


def test_ten_percent_drops(
    balancer: BalancerHandle, backends, pool_name: str, redis_client
) -> None:  # type: ignore[no-untyped-def]
    three = start_backends(backends, 3)
    register_all(balancer, pool_name, three)
    balancer.run(
        balancer.store.put_pool(
            PoolConfig(name=pool_name, report_interval_ms=1000, drops=(DropRate("load_shed", 100),))
        )
    )
    with LookasideChannel(pool_name, balancer.address) as channel:
        wait_until(lambda: any(not a for a, _ in channel.backends()))
        stub = rg_grpc.RouteGuideStub(channel)
        failed = 0
        for _ in range(3000):
            try:
                stub.GetFeature(rg.Point())
            except grpc.RpcError as exc:
                assert exc.code() is grpc.StatusCode.UNAVAILABLE
                failed += 1
        total = keys.load_total(pool_name)
        wait_until(lambda: redis_client.hget(total, "started") == "3000", timeout=15)
    assert abs(failed / 3000 - 0.10) <= 0.015
    assert redis_client.hget(total, "drop:load_shed") == str(failed)


def test_streaming_calls_in_a_loop_never_stall_a_subchannel(
    balancer: BalancerHandle, backends, pool_name: str
) -> None:  # type: ignore[no-untyped-def]
    """Streaming calls end on the sub-channel's own grpc thread, where the
    ClientStats count runs: counting must not wait for anything only that
    thread can deliver (the initial metadata, when the status came first),
    or every later call on that backend hangs, deadline and all."""
    (b,) = start_backends(backends, 1)
    register_all(balancer, pool_name, [b])
    per_thread = 300
    finished: list[int] = []
    with LookasideChannel(pool_name, balancer.address) as channel:
        assert channel.wait_for_list(10)
        stub = rg_grpc.RouteGuideStub(channel)

        def worker() -> None:
            for _ in range(per_thread):
                # No notes sent, none back: the headers and the status come
                # in together, and grpc may hand over the status first.
                assert list(stub.RouteChat(iter(()), timeout=5)) == []
            finished.append(per_thread)

        threads = [threading.Thread(target=worker, daemon=True) for _ in range(4)]
        for t in threads:
            t.start()
        # A bound on real calls: a stalled sub-channel never ends them.
        deadline = time.monotonic() + 30
        for t in threads:
            t.join(max(deadline - time.monotonic(), 0.0))
        assert finished == [per_thread] * 4, f"calls hung: {len(finished)} of 4 threads done"
    assert b.calls == 4 * per_thread


def test_streaming_call_that_ends_before_any_header_is_counted(
    balancer: BalancerHandle, backends, pool_name: str
) -> None:  # type: ignore[no-untyped-def]
    """A stream whose deadline passes before the server sent anything is
    counted once it ends (finished, not known received, not failed to send)."""
    (b,) = start_backends(backends, 1)
    register_all(balancer, pool_name, [b])
    # No load report within the test: the counters hold every call.
    balancer.run(balancer.store.put_pool(PoolConfig(name=pool_name, report_interval_ms=600_000)))
    with LookasideChannel(pool_name, balancer.address) as channel:
        assert channel.wait_for_list(10)
        stub = rg_grpc.RouteGuideStub(channel)
        hold = threading.Event()

        def notes():  # type: ignore[no-untyped-def]
            hold.wait(10)
            yield from ()

        with pytest.raises(grpc.RpcError) as err:
            list(stub.RouteChat(notes(), timeout=0.3))
        hold.set()
        assert err.value.code() is grpc.StatusCode.DEADLINE_EXCEEDED
        c = channel.counters
        wait_until(lambda: c.finished == 1)
        assert (c.started, c.known_received, c.failed_to_send) == (1, 0, 0)
