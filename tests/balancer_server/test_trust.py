"""Attacks on the registration API, each refused with its status, and
nothing written to Redis (the real keys are read afterwards)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
import redis

from balancer_server import metrics
from balancer_server.auth import token_id
from lookaside_proto.registry.v1 import registry_pb2 as pb
from lookaside_proto.registry.v1 import registry_pb2_grpc as pb_grpc
from lookaside_registry import keys
from lookaside_registry.model import Backend, PoolConfig, RegistrationRules, backend_id_for
from tests.support import BalancerHandle

GLOBAL = "global-registration-token-0123456789"
POOL_TOKEN = "pool-registration-token-0123456789"
OTHER_TOKEN = "other-pool-token-abcdefghijklmnop"
SPECIAL_TOKEN = "special-pool-token-abcdefghijklmn"
Status = grpc.StatusCode


def write_policy(tmp_path: Path, pool: str, **top: object) -> str:
    policy = {
        "pools": {
            pool: {"tokens": [POOL_TOKEN], "max_backends": 3},
            "other-*": {"tokens": [OTHER_TOKEN]},
            f"{pool}-special": {"tokens": [SPECIAL_TOKEN], "allow_special_addresses": True},
            f"{pool}-open-*": {"create": True},
        },
        **top,
    }
    path = tmp_path / "policy.json"
    path.write_text(json.dumps(policy))
    return str(path)


@pytest.fixture
def secure(redis_url: str, tmp_path: Path, pool_name: str) -> Iterator[BalancerHandle]:
    handle = BalancerHandle(
        redis_url,
        insecure_registration=False,
        registration_token=GLOBAL,
        registration_policy=write_policy(tmp_path, pool_name),
    )
    handle.run(handle.store.put_pool(PoolConfig(name=pool_name)))
    # Special addresses are not the caller's: that pool lets any be claimed.
    anywhere = RegistrationRules(address_policy="any")
    handle.run(handle.store.put_pool(PoolConfig(f"{pool_name}-special", registration=anywhere)))
    yield handle
    handle.stop()


@pytest.fixture
def stub(secure: BalancerHandle) -> Iterator[pb_grpc.RegistryStub]:
    channel = grpc.insecure_channel(secure.address)
    yield pb_grpc.RegistryStub(channel)
    channel.close()


def auth(token: str) -> list[tuple[str, str]]:
    return [("authorization", f"Bearer {token}")]


def register(pool: str, host: str = "127.0.0.1", port: int = 9000, **kw) -> pb.RegisterRequest:  # type: ignore[no-untyped-def]
    return pb.RegisterRequest(pool=pool, host=host, port=port, **kw)


def refused(call, request, metadata=None) -> grpc.RpcError:  # type: ignore[no-untyped-def]
    with pytest.raises(grpc.RpcError) as info:
        call(request, metadata=metadata, timeout=5)
    return info.value


def pool_keys(client: redis.Redis, pool: str) -> list[str]:
    return sorted(client.keys(f"lookaside:{{{pool}}}:*"))


def refusals(method: str, code: str, reason: str) -> float:
    value = metrics.REGISTRY.get_sample_value(
        "lookaside_balancer_registration_auth_refusals_total",
        {"method": method, "code": code, "reason": reason},
    )
    return value or 0.0


def test_anonymous_hijack_of_an_existing_pool_is_unauthenticated(
    stub, redis_client, pool_name: str, caplog: pytest.LogCaptureFixture
) -> None:  # type: ignore[no-untyped-def]
    before = refusals("Register", "UNAUTHENTICATED", "no_credential")
    error = refused(stub.Register, register(pool_name, host="10.9.9.9", weight=1000))
    assert error.code() is Status.UNAUTHENTICATED
    assert "authorization: Bearer" in error.details()
    assert redis_client.hlen(keys.backends(pool_name)) == 0
    assert refusals("Register", "UNAUTHENTICATED", "no_credential") == before + 1
    line = next(r.getMessage() for r in caplog.records if "registration refused" in r.getMessage())
    assert "peer=ipv" in line and "no_credential" in line


@pytest.mark.parametrize(
    ("metadata", "code", "reason"),
    [
        (auth("not-a-token-of-ours-at-all"), Status.UNAUTHENTICATED, "bad_token"),
        (
            [("authorization", "Basic dXNlcjpwYXNz")],
            Status.UNAUTHENTICATED,
            "malformed_authorization",
        ),
        (auth(OTHER_TOKEN), Status.PERMISSION_DENIED, "token_not_for_pool"),
    ],
)
def test_wrong_credentials_are_refused_without_echoing_them(
    stub, redis_client, pool_name: str, caplog: pytest.LogCaptureFixture, metadata, code, reason
) -> None:  # type: ignore[no-untyped-def]
    before = refusals("Register", code.name, reason)
    error = refused(stub.Register, register(pool_name), metadata)
    assert error.code() is code
    assert refusals("Register", code.name, reason) == before + 1
    secret = metadata[0][1].split(" ", 1)[1]
    assert secret not in error.details()
    assert all(secret not in r.getMessage() for r in caplog.records)
    assert redis_client.hlen(keys.backends(pool_name)) == 0


def test_pool_token_and_global_token_register(stub, redis_client, pool_name: str) -> None:  # type: ignore[no-untyped-def]
    a = stub.Register(register(pool_name, port=9001), metadata=auth(POOL_TOKEN), timeout=5)
    b = stub.Register(register(pool_name, port=9002), metadata=auth(GLOBAL), timeout=5)
    assert redis_client.hlen(keys.backends(pool_name)) == 2
    events = [json.loads(e) for e in redis_client.lrange(keys.events(pool_name), 0, -1)]
    actors = {e.get("actor") for e in events}
    assert f"registration:pool-token:{pool_name}#{token_id(POOL_TOKEN.encode())}" in actors
    assert f"registration:global-token#{token_id(GLOBAL.encode())}" in actors
    # A pool's token is for that pool only.
    other = f"{pool_name}-special"
    error = refused(stub.Register, register(other), auth(POOL_TOKEN))
    assert error.code() is Status.PERMISSION_DENIED
    assert redis_client.hlen(keys.backends(other)) == 0
    assert a.lease_id and b.lease_id


def test_nobody_removes_anybody(stub, secure: BalancerHandle, redis_client, pool_name: str) -> None:  # type: ignore[no-untyped-def]
    lease = stub.Register(register(pool_name, port=9003), metadata=auth(POOL_TOKEN), timeout=5)
    static = Backend(
        id=backend_id_for("127.0.0.1", 9004), pool=pool_name, host="127.0.0.1",
        ip="127.0.0.1", port=9004,
    )  # fmt: skip
    secure.run(secure.store.put_static(static))
    for backend_id in (lease.backend_id, static.id):
        for call, request in (
            (stub.Deregister, pb.DeregisterRequest(pool=pool_name, backend_id=backend_id)),
            (stub.Drain, pb.DrainRequest(pool=pool_name, backend_id=backend_id)),
            (stub.Heartbeat, pb.HeartbeatRequest(pool=pool_name, backend_id=backend_id)),
        ):
            assert refused(call, request).code() is Status.UNAUTHENTICATED
            error = refused(call, request, auth(POOL_TOKEN))
            assert error.code() is Status.INVALID_ARGUMENT
            assert "lease_id is empty" in error.details()
            request.lease_id = "0123456789abcdef"  # a guess
            guessed = refused(call, request, auth(POOL_TOKEN)).code()
            assert guessed in (
                Status.NOT_FOUND,
                Status.PERMISSION_DENIED,
                Status.FAILED_PRECONDITION,
            )
    stored = redis_client.hgetall(keys.backends(pool_name))
    assert set(stored) == {lease.backend_id, static.id}
    assert all('"state":"serving"' in v for v in stored.values())


def test_pools_are_not_created_by_registration(stub, redis_client, pool_name: str) -> None:  # type: ignore[no-untyped-def]
    for i in range(5):
        name = f"{pool_name}-new{i}"
        error = refused(stub.Register, register(name), auth(GLOBAL))
        assert error.code() is Status.NOT_FOUND
        assert "does not exist" in error.details() and "operator" in error.details()
        assert pool_keys(redis_client, name) == []
        assert not redis_client.sismember(keys.POOLS, name)
    # ... unless the pool's policy allows creation.
    name = f"{pool_name}-open-a"
    stub.Register(register(name), metadata=auth(GLOBAL), timeout=5)
    assert redis_client.sismember(keys.POOLS, name)
    assert redis_client.hlen(keys.backends(name)) == 1


def test_registrations_per_pool_are_limited(stub, redis_client, pool_name: str) -> None:  # type: ignore[no-untyped-def]
    for port in (9011, 9012, 9013):
        stub.Register(register(pool_name, port=port), metadata=auth(POOL_TOKEN), timeout=5)
    error = refused(stub.Register, register(pool_name, port=9014), auth(POOL_TOKEN))
    assert error.code() is Status.RESOURCE_EXHAUSTED
    assert "max_backends" in error.details()
    assert redis_client.hlen(keys.backends(pool_name)) == 3
    # Registering again an address that is there is no new registration.
    stub.Register(register(pool_name, port=9013), metadata=auth(POOL_TOKEN), timeout=5)


def test_pools_created_at_once_stop_at_the_limit(tmp_path: Path, pool_name: str) -> None:
    # 80 registrations into 80 new pools at once, 25 allowed: the count and
    # the reservation of the name are one atomic step, so exactly 25 exist.
    from lookaside.redis_process import RedisProcess

    own = RedisProcess().start()
    handle = BalancerHandle(
        own.url,
        insecure_registration=False,
        registration_policy=write_policy(tmp_path, pool_name, max_pools=25),
        registration_token=GLOBAL,
    )
    client = redis.Redis.from_url(own.url, decode_responses=True)
    try:
        with grpc.insecure_channel(handle.address) as channel:
            stub = pb_grpc.RegistryStub(channel)
            calls = [
                stub.Register.future(
                    register(f"{pool_name}-open-{i}"), metadata=auth(GLOBAL), timeout=30
                )
                for i in range(80)
            ]
            codes = [c.code() for c in calls]
        assert codes.count(Status.OK) == 25
        assert codes.count(Status.RESOURCE_EXHAUSTED) == 55
        assert client.scard(keys.POOLS) == 25
        assert len(client.keys("lookaside:{*}:config")) == 25
    finally:
        client.close()
        handle.stop()
        own.stop()


def test_pools_created_are_limited(tmp_path: Path, pool_name: str) -> None:
    from lookaside.redis_process import RedisProcess

    own = RedisProcess().start()
    handle = BalancerHandle(
        own.url,
        insecure_registration=False,
        registration_policy=write_policy(tmp_path, pool_name, max_pools=2),
        registration_token=GLOBAL,
    )
    client = redis.Redis.from_url(own.url, decode_responses=True)
    try:
        with grpc.insecure_channel(handle.address) as channel:
            stub = pb_grpc.RegistryStub(channel)
            for i in range(2):
                stub.Register(register(f"{pool_name}-open-{i}"), metadata=auth(GLOBAL), timeout=5)
            error = refused(stub.Register, register(f"{pool_name}-open-x"), auth(GLOBAL))
            assert error.code() is Status.RESOURCE_EXHAUSTED
            assert "max_pools" in error.details()
        assert client.scard(keys.POOLS) == 2
        assert pool_keys(client, f"{pool_name}-open-x") == []
    finally:
        client.close()
        handle.stop()
        own.stop()


BAD_INPUT = [
    ({"pool": "nlpool\n"}, "pool name"),
    ({"host": "fe80::1%<b>x</b>\nforged log line"}, "scope id"),
    ({"host": "fe80::1%" + "A" * 100_000}, "scope id"),
    ({"host": "[fe80::1%eth0]"}, "scope id"),
    ({"host": "224.0.0.1"}, "multicast"),
    ({"host": "ff02::1"}, "multicast"),
    ({"host": "255.255.255.255"}, "broadcast"),
    ({"host": "0.0.0.0"}, "wildcard"),
    ({"host": "::"}, "wildcard"),
    ({"host": "169.254.169.254"}, "link-local"),
    ({"host": "::ffff:169.254.169.254"}, "link-local"),
    ({"host": "fe80::1"}, "link-local"),
    ({"host": "example.com\n"}, "neither an IP address"),
    ({"zone": "z1\n"}, "zone"),
    ({"metadata": {"k\n": "v"}}, "metadata key"),
    ({"metadata": {"k": "line\nbreak"}}, "line break"),
    ({"metadata": {f"k{i}": "v" * 256 for i in range(16)}}, "bytes in all"),
]


@pytest.mark.parametrize(("fields", "message"), BAD_INPUT)
def test_input_that_slipped_through_is_refused(
    stub, redis_client, pool_name: str, fields, message
) -> None:  # type: ignore[no-untyped-def]
    request = register(fields.pop("pool", pool_name), **fields)
    error = refused(stub.Register, request, auth(GLOBAL))
    assert error.code() is Status.INVALID_ARGUMENT
    assert message in error.details()
    assert len(error.details()) < 400
    assert "\n" not in error.details().replace("\\n", "")
    assert redis_client.hlen(keys.backends(pool_name)) == 0
    assert not redis_client.sismember(keys.POOLS, "nlpool\n")


def test_a_pool_may_allow_special_addresses(stub, redis_client, pool_name: str) -> None:  # type: ignore[no-untyped-def]
    pool = f"{pool_name}-special"
    stub.Register(register(pool, host="169.254.10.1"), metadata=auth(SPECIAL_TOKEN), timeout=5)
    stored = list(redis_client.hgetall(keys.backends(pool)).values())
    assert len(stored) == 1 and '"ip":"169.254.10.1"' in stored[0]
    # Scope ids stay refused everywhere.
    error = refused(stub.Register, register(pool, host="fe80::1%eth0"), auth(SPECIAL_TOKEN))
    assert error.code() is Status.INVALID_ARGUMENT


def test_without_any_credential_configured_everything_is_refused(
    redis_url: str, pool_name: str
) -> None:
    handle = BalancerHandle(redis_url, insecure_registration=False)
    try:
        handle.run(handle.store.put_pool(PoolConfig(name=pool_name)))
        with grpc.insecure_channel(handle.address) as channel:
            stub = pb_grpc.RegistryStub(channel)
            for metadata in (None, auth(GLOBAL)):
                error = refused(stub.Register, register(pool_name), metadata)
                assert error.code() is Status.UNAUTHENTICATED
        assert metrics.REGISTRY.get_sample_value("lookaside_balancer_insecure_registration") == 0
    finally:
        handle.stop()


def test_random_registrations_end_precisely_and_store_only_valid_backends(
    stub, redis_client, pool_name: str
) -> None:  # type: ignore[no-untyped-def]
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    from lookaside_registry import validation as v

    codes = {
        Status.OK,
        Status.INVALID_ARGUMENT,
        Status.NOT_FOUND,
        Status.RESOURCE_EXHAUSTED,
        Status.PERMISSION_DENIED,  # an address not the caller's (address_policy peer)
    }
    requests = st.builds(
        pb.RegisterRequest,
        pool=st.one_of(st.just(pool_name), st.text(max_size=40)),
        host=st.one_of(st.ip_addresses().map(str), st.text(max_size=40)),
        port=st.integers(0, 70000),
        weight=st.integers(0, 1200),
        zone=st.text(max_size=70),
        metadata=st.dictionaries(st.text(max_size=10), st.text(max_size=20), max_size=3),
    )

    @settings(
        max_examples=60, deadline=None, database=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    )  # fmt: skip
    @given(requests)
    def one(request: pb.RegisterRequest) -> None:
        try:
            stub.Register(request, metadata=auth(GLOBAL), timeout=10)
            code = Status.OK
        except grpc.RpcError as exc:
            code = exc.code()
        assert code in codes, code

    one()
    for raw in redis_client.hgetall(keys.backends(pool_name)).values():
        stored = Backend.from_json(raw)
        assert v.address_problem(stored.ip) is None
        assert stored.ip == "127.0.0.1"  # the caller's own address only
        assert 1 <= stored.port <= 65535 and 1 <= stored.weight <= 100  # max_weight
        v.check_zone(stored.zone)
        v.check_metadata(stored.metadata)
