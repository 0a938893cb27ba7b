"""The registration API: leases, heartbeats, deregistration, and refusals
with precise messages."""

from __future__ import annotations

from collections.abc import Iterator

import grpc
import pytest

from lookaside_proto.registry.v1 import registry_pb2 as pb
from lookaside_proto.registry.v1 import registry_pb2_grpc as pb_grpc
from lookaside_registry import keys
from tests.support import BalancerHandle, LbStream, wait_until


@pytest.fixture
def registry(balancer: BalancerHandle) -> Iterator[pb_grpc.RegistryStub]:
    channel = grpc.insecure_channel(balancer.address)
    yield pb_grpc.RegistryStub(channel)
    channel.close()


def reg(pool: str, **kw) -> pb.RegisterRequest:  # type: ignore[no-untyped-def]
    kw.setdefault("host", "127.0.0.1")
    kw.setdefault("port", 8080)
    return pb.RegisterRequest(pool=pool, **kw)


def test_register_heartbeat_deregister(registry, redis_client, pool_name: str) -> None:  # type: ignore[no-untyped-def]
    req = reg(pool_name, port=7001, weight=3, zone="z1", metadata={"version": "1.2"})
    req.lease_ttl.FromSeconds(30)
    resp = registry.Register(req, timeout=5)
    assert resp.address == "127.0.0.1:7001"
    assert resp.lease_ttl.ToMilliseconds() == 30_000
    assert resp.heartbeat_interval.ToMilliseconds() == 10_000
    stored = redis_client.hget(keys.backends(pool_name), resp.backend_id)
    assert '"weight":3' in stored and '"zone":"z1"' in stored
    assert redis_client.sismember(keys.POOLS, pool_name)

    hb = registry.Heartbeat(
        pb.HeartbeatRequest(
            pool=pool_name,
            backend_id=resp.backend_id,
            lease_id=resp.lease_id,
            load=pb.BackendLoad(utilization=0.5, in_flight=3, qps=12.5),
        ),
        timeout=5,
    )
    assert hb.lease_ttl.ToMilliseconds() == 30_000
    assert '"in_flight":3' in redis_client.hget(keys.backends(pool_name), resp.backend_id)

    registry.Deregister(
        pb.DeregisterRequest(pool=pool_name, backend_id=resp.backend_id, lease_id=resp.lease_id),
        timeout=5,
    )
    assert redis_client.hget(keys.backends(pool_name), resp.backend_id) is None
    kinds = [
        e.split('"kind":"')[1].split('"')[0]
        for e in redis_client.lrange(keys.events(pool_name), 0, -1)
    ]
    assert kinds[:2] == ["deregistered", "registered"]


def test_registering_again_replaces_the_lease(registry, pool_name: str) -> None:  # type: ignore[no-untyped-def]
    first = registry.Register(reg(pool_name, port=7002), timeout=5)
    second = registry.Register(reg(pool_name, port=7002), timeout=5)
    assert first.backend_id == second.backend_id
    assert first.lease_id != second.lease_id
    with pytest.raises(grpc.RpcError) as info:
        registry.Heartbeat(
            pb.HeartbeatRequest(
                pool=pool_name, backend_id=first.backend_id, lease_id=first.lease_id
            ),
            timeout=5,
        )
    assert info.value.code() is grpc.StatusCode.NOT_FOUND
    assert "replaced by a newer registration" in info.value.details()


def test_empty_host_means_the_caller_address(registry, pool_name: str) -> None:  # type: ignore[no-untyped-def]
    resp = registry.Register(reg(pool_name, host="", port=7003), timeout=5)
    assert resp.address == "127.0.0.1:7003"


def test_host_name_is_resolved(registry, pool_name: str) -> None:  # type: ignore[no-untyped-def]
    resp = registry.Register(reg(pool_name, host="localhost", port=7004), timeout=5)
    assert resp.address in ("127.0.0.1:7004", "[::1]:7004", "::1:7004")


def test_expired_lease_leaves_the_list(balancer: BalancerHandle, registry, pool_name: str) -> None:  # type: ignore[no-untyped-def]
    keep = reg(pool_name, port=7010)
    keep.lease_ttl.FromSeconds(60)
    registry.Register(keep, timeout=5)
    short = reg(pool_name, port=7011)
    short.lease_ttl.FromSeconds(1)
    registry.Register(short, timeout=5)
    stream = LbStream(balancer.address, pool_name)
    try:
        stream.next()
        seen = {a for a, _, _ in stream.next_list()}
        if seen != {"127.0.0.1:7010", "127.0.0.1:7011"}:
            seen = {a for a, _, _ in stream.next_list()}
        assert seen == {"127.0.0.1:7010", "127.0.0.1:7011"}
        # No heartbeat: after the TTL the reaper removes it and the list shrinks.
        assert [a for a, _, _ in stream.next_list(timeout=15)] == ["127.0.0.1:7010"]
    finally:
        stream.close()
    events = balancer.run(balancer.store.events(pool_name))
    assert events[0]["kind"] == "expired"


@pytest.mark.parametrize(
    ("request_kw", "message"),
    [
        ({"pool": ""}, "pool name is empty"),
        ({"pool": "bad pool!"}, "pool name 'bad pool!' is invalid"),
        ({"port": 0}, "port 0 is out of range 1..65535"),
        ({"port": 70000}, "port 70000 is out of range 1..65535"),
        ({"port": -5}, "port -5 is out of range 1..65535"),
        ({"weight": 1001}, "weight 1001 is out of range 1..1000"),
        ({"host": "no-such-host.invalid"}, "host 'no-such-host.invalid' does not resolve"),
        ({"host": "bad_host!"}, "host 'bad_host!' is neither an IP address nor a valid host name"),
        ({"host": "0.0.0.0"}, "wildcard address"),
        ({"zone": "z" * 64}, "zone"),
        ({"metadata": {f"k{i}": "v" for i in range(17)}}, "metadata has 17 entries; at most 16"),
        ({"metadata": {"k": "v" * 257}}, "metadata value for 'k' is 257 characters; at most 256"),
        ({"metadata": {"bad key": "v"}}, "metadata key 'bad key' is invalid"),
    ],
)
def test_bad_registrations_are_refused(registry, pool_name: str, request_kw, message: str) -> None:  # type: ignore[no-untyped-def]
    kw = {"pool": pool_name, **request_kw}
    with pytest.raises(grpc.RpcError) as info:
        registry.Register(reg(**kw), timeout=5)
    assert info.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert message in info.value.details()
    assert info.value.details().startswith("registration refused: ")


# 1..3600 s is what any lease may be; 600 s the default max_lease_ttl_ms of a pool.
@pytest.mark.parametrize(
    ("seconds", "ok"), [(0.5, False), (1, True), (600, True), (601, False), (3601, False)]
)
def test_lease_ttl_bounds(registry, pool_name: str, seconds: float, ok: bool) -> None:  # type: ignore[no-untyped-def]
    req = reg(pool_name, port=7020)
    req.lease_ttl.FromMilliseconds(int(seconds * 1000))
    if ok:
        assert registry.Register(req, timeout=5).lease_ttl.ToMilliseconds() == int(seconds * 1000)
    else:
        with pytest.raises(grpc.RpcError) as info:
            registry.Register(req, timeout=5)
        assert info.value.code() is grpc.StatusCode.INVALID_ARGUMENT
        assert "lease TTL" in info.value.details()


def test_unknown_backend_heartbeat_and_deregister_are_not_found(registry, pool_name: str) -> None:  # type: ignore[no-untyped-def]
    for call, request in (
        (registry.Heartbeat, pb.HeartbeatRequest(pool=pool_name, backend_id="nope", lease_id="x")),
        (
            registry.Deregister,
            pb.DeregisterRequest(pool=pool_name, backend_id="nope", lease_id="x"),
        ),
    ):
        with pytest.raises(grpc.RpcError) as info:
            call(request, timeout=5)
        assert info.value.code() is grpc.StatusCode.NOT_FOUND
        assert "not registered" in info.value.details()


def test_redis_down_gives_unavailable_and_keeps_lists(pool_name: str) -> None:
    from lookaside.redis_process import RedisProcess

    own = RedisProcess().start()
    balancer = BalancerHandle(own.url)
    try:
        balancer.run(
            balancer.store.register(pool=pool_name, host="127.0.0.1", ip="127.0.0.1", port=7030)
        )
        stream = LbStream(balancer.address, pool_name)
        stream.next()
        assert [a for a, _, _ in stream.next_list()] == ["127.0.0.1:7030"]
        own.stop()
        wait_until(lambda: not balancer.server.watcher.redis_ok, timeout=15)
        channel = grpc.insecure_channel(balancer.address)
        with pytest.raises(grpc.RpcError) as info:
            pb_grpc.RegistryStub(channel).Register(reg(pool_name, port=7031), timeout=10)
        assert info.value.code() is grpc.StatusCode.UNAVAILABLE
        assert "registry unavailable" in info.value.details()
        channel.close()
        # A client connecting now still gets the last snapshot's list.
        late = LbStream(balancer.address, pool_name)
        late.next()
        assert [a for a, _, _ in late.next_list()] == ["127.0.0.1:7030"]
        late.close()
        stream.close()
    finally:
        balancer.stop()
        own.stop()


@pytest.mark.parametrize("latency", [float("nan"), float("inf"), -1.0, 1e308])
def test_heartbeat_with_a_latency_that_is_not_a_finite_number_is_invalid(
    registry, pool_name: str, latency: float
) -> None:  # type: ignore[no-untyped-def]
    resp = registry.Register(reg(pool_name, port=7301), timeout=5)
    with pytest.raises(grpc.RpcError) as err:
        registry.Heartbeat(
            pb.HeartbeatRequest(
                pool=pool_name,
                backend_id=resp.backend_id,
                lease_id=resp.lease_id,
                load=pb.BackendLoad(latency_ms=latency),
            ),
            timeout=5,
        )
    assert err.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert "latency_ms" in err.value.details() and "finite" in err.value.details()


def test_heartbeat_with_unknown_utilization_is_accepted(registry, pool_name: str) -> None:  # type: ignore[no-untyped-def]
    # registry.proto: a negative utilization means unknown, and LoadMeter sends -1.
    resp = registry.Register(reg(pool_name, port=7302), timeout=5)
    beat = registry.Heartbeat(
        pb.HeartbeatRequest(
            pool=pool_name,
            backend_id=resp.backend_id,
            lease_id=resp.lease_id,
            load=pb.BackendLoad(utilization=-1.0, in_flight=2, qps=5.0, latency_ms=3.0),
        ),
        timeout=5,
    )
    assert beat.lease_ttl.ToMilliseconds() > 0
    with pytest.raises(grpc.RpcError) as err:
        registry.Heartbeat(
            pb.HeartbeatRequest(
                pool=pool_name,
                backend_id=resp.backend_id,
                lease_id=resp.lease_id,
                load=pb.BackendLoad(qps=-5.0),
            ),
            timeout=5,
        )
    assert err.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert "load.qps" in err.value.details()


def test_lease_calls_need_the_lease_and_static_backends_refuse_registration(
    registry, balancer: BalancerHandle, pool_name: str
) -> None:  # type: ignore[no-untyped-def]
    resp = registry.Register(reg(pool_name, port=7401), timeout=5)
    with pytest.raises(grpc.RpcError) as err:
        registry.Heartbeat(
            pb.HeartbeatRequest(pool=pool_name, backend_id=resp.backend_id, lease_id=""), timeout=5
        )
    assert err.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert "lease_id is empty" in err.value.details()
    with pytest.raises(grpc.RpcError) as err:
        registry.Heartbeat(
            pb.HeartbeatRequest(pool=pool_name, backend_id=resp.backend_id, lease_id="0" * 16),
            timeout=5,
        )
    assert err.value.code() is grpc.StatusCode.NOT_FOUND
    assert "lease" in err.value.details()

    from lookaside_registry.model import Backend, backend_id_for

    static = Backend(id=backend_id_for("127.0.0.1", 7402), pool=pool_name, host="127.0.0.1",
                     ip="127.0.0.1", port=7402)  # fmt: skip
    balancer.run(balancer.store.put_static(static))
    with pytest.raises(grpc.RpcError) as err:
        registry.Register(reg(pool_name, port=7402), timeout=5)
    assert err.value.code() is grpc.StatusCode.FAILED_PRECONDITION
    assert "static backend" in err.value.details()
