"""What a credential may claim: a pool's address_policy binds the registered
address to the caller, its caps bound weight and lease, and a live lease is
its registrant's alone. Against a real balancer and Redis, with another
loopback address (127.0.0.2) standing for "not mine"; operators act through
the real admin API."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest

from admin_api.app import create_app
from balancer_server import metrics
from balancer_server.address_policy import dns_san_matches
from lookaside.certs import Issued, issue
from lookaside_proto.registry.v1 import registry_pb2 as pb
from lookaside_proto.registry.v1 import registry_pb2_grpc as pb_grpc
from lookaside_registry import keys
from lookaside_registry.hosts import peer_ip
from lookaside_registry.model import Backend, PoolConfig, RegistrationRules
from tests.admin_api.conftest import AUTH, make_settings
from tests.support import BalancerHandle, LbStream

TOKEN_A = "routeguide-token-a-0123456789abcdef"
TOKEN_B = "routeguide-token-b-0123456789abcdef"
Status = grpc.StatusCode
NO_HEALTH = {"health_checks": {"enabled": False}}


def auth(token: str) -> list[tuple[str, str]]:
    return [("authorization", f"Bearer {token}")]


def admin(redis_url: str, method: str, path: str, **kw: Any) -> httpx.Response:
    """One request to a real admin API app on the same Redis."""

    async def go() -> httpx.Response:
        app = create_app(make_settings(redis_url))
        transport = httpx.ASGITransport(app=app, client=("127.0.0.7", 40000))
        try:
            async with httpx.AsyncClient(transport=transport, base_url="http://admin.test") as c:
                return await c.request(method, path, headers=AUTH, **kw)
        finally:
            await app.state.store.close()

    return asyncio.run(go())


def create_pool(redis_url: str, pool: str, **settings: Any) -> None:
    r = admin(redis_url, "POST", "/api/v1/pools", json={"name": pool, **NO_HEALTH, **settings})
    assert r.status_code == 201, r.text


def refused(call: Any, request: Any, metadata: Any = None) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as info:
        call(request, metadata=metadata, timeout=5)
    return info.value


def stored(redis_client: Any, pool: str) -> dict[str, Backend]:
    backends = [Backend.from_json(v) for v in redis_client.hgetall(keys.backends(pool)).values()]
    return {f"{b.ip}:{b.port}": b for b in backends}


def refusals(reason: str) -> float:
    value = metrics.REGISTRY.get_sample_value(
        "lookaside_balancer_registration_auth_refusals_total",
        {"method": "Register", "code": "PERMISSION_DENIED", "reason": reason},
    )
    return value or 0.0


@pytest.fixture
def secure(redis_url: str, tmp_path: Path, pool_name: str) -> Iterator[BalancerHandle]:
    """A balancer where the pool has two tokens (two registrants)."""
    policy = tmp_path / "policy.json"
    policy.write_text(json.dumps({"pools": {f"{pool_name}*": {"tokens": [TOKEN_A, TOKEN_B]}}}))
    handle = BalancerHandle(redis_url, insecure_registration=False, registration_policy=str(policy))
    yield handle
    handle.stop()


@pytest.fixture
def stub(secure: BalancerHandle) -> Iterator[pb_grpc.RegistryStub]:
    channel = grpc.insecure_channel(secure.address)
    yield pb_grpc.RegistryStub(channel)
    channel.close()


def test_a_live_lease_is_taken_over_by_no_other_registrant(
    stub: pb_grpc.RegistryStub, redis_url: str, redis_client: Any, pool_name: str
) -> None:
    """Before: token B re-registered A's ip:port, got a new lease and
    deregistered it. Now every step of that is PERMISSION_DENIED."""
    create_pool(redis_url, pool_name)
    mine = stub.Register(pb.RegisterRequest(pool=pool_name, port=9100), metadata=auth(TOKEN_A))
    assert mine.address == "127.0.0.1:9100"
    before = stored(redis_client, pool_name)["127.0.0.1:9100"]
    assert before.owner.startswith(f"pool-token:{pool_name}*#") and TOKEN_A not in before.owner

    takeover = pb.RegisterRequest(pool=pool_name, port=9100, weight=100)
    error = refused(stub.Register, takeover, auth(TOKEN_B))
    assert error.code() is Status.PERMISSION_DENIED
    assert "another registrant" in error.details()
    # Even with the victim's lease id in hand.
    ids = {"pool": pool_name, "backend_id": mine.backend_id, "lease_id": mine.lease_id}
    for call, request in (
        (stub.Heartbeat, pb.HeartbeatRequest(**ids)),
        (stub.Drain, pb.DrainRequest(**ids)),
        (stub.Deregister, pb.DeregisterRequest(**ids)),
    ):
        error = refused(call, request, auth(TOKEN_B))
        assert error.code() is Status.PERMISSION_DENIED, call
        assert "another registrant" in error.details()
    after = stored(redis_client, pool_name)["127.0.0.1:9100"]
    assert (after.lease_id, after.owner, after.weight, after.state.value) == (
        mine.lease_id, before.owner, 1, "serving"
    )  # fmt: skip
    # The registrant itself renews and drains.
    stub.Heartbeat(pb.HeartbeatRequest(**ids), metadata=auth(TOKEN_A), timeout=5)
    stub.Drain(pb.DrainRequest(**ids), metadata=auth(TOKEN_A), timeout=5)

    # An operator removes it through the admin API; then it is anyone's.
    r = admin(redis_url, "DELETE", f"/api/v1/pools/{pool_name}/backends/{mine.backend_id}")
    assert r.status_code == 204, r.text
    theirs = stub.Register(takeover, metadata=auth(TOKEN_B), timeout=5)
    assert theirs.lease_id != mine.lease_id
    owner = stored(redis_client, pool_name)["127.0.0.1:9100"].owner
    assert owner.startswith(f"pool-token:{pool_name}*#") and owner != before.owner


def test_an_address_that_is_not_the_callers_is_refused_under_peer(
    stub: pb_grpc.RegistryStub, secure: BalancerHandle, redis_url: str, redis_client: Any,
    pool_name: str,
) -> None:  # fmt: skip
    """Before: from 127.0.0.1 the pool token registered 127.0.0.2 with
    weight 1000 and a 3,600 s lease, and took 997 of 1,000 list entries."""
    create_pool(redis_url, pool_name)  # address_policy peer: the default
    for port, host in ((9201, ""), (9202, "127.0.0.1"), (9203, "localhost")):
        lease = stub.Register(
            pb.RegisterRequest(pool=pool_name, host=host, port=port),
            metadata=auth(TOKEN_A), timeout=5,
        )  # fmt: skip
        assert lease.address == f"127.0.0.1:{port}"
    before = refusals("address_policy")
    attack = pb.RegisterRequest(pool=pool_name, host="127.0.0.2", port=8081, weight=1000)
    attack.lease_ttl.FromSeconds(3600)
    error = refused(stub.Register, attack, auth(TOKEN_A))
    assert error.code() is Status.PERMISSION_DENIED
    assert error.details().startswith(
        "registration refused: 127.0.0.2:8081 is not the caller's address 127.0.0.1 "
        f"(pool {pool_name} has address_policy peer)"
    )
    assert refusals("address_policy") == before + 1
    assert set(stored(redis_client, pool_name)) == {f"127.0.0.1:{p}" for p in (9201, 9202, 9203)}
    stream = LbStream(secure.address, pool_name)
    try:
        entries = stream.next_list()
    finally:
        stream.close()
    assert sorted(addr for addr, _, _ in entries) == [f"127.0.0.1:{p}" for p in (9201, 9202, 9203)]


def test_weight_and_lease_are_capped_per_pool(
    stub: pb_grpc.RegistryStub, redis_url: str, redis_client: Any, pool_name: str
) -> None:
    create_pool(redis_url, pool_name)
    heavy = pb.RegisterRequest(pool=pool_name, port=9301, weight=101)
    error = refused(stub.Register, heavy, auth(TOKEN_A))
    assert error.code() is Status.INVALID_ARGUMENT
    assert "weight 101 is above max_weight 100" in error.details()
    long = pb.RegisterRequest(pool=pool_name, port=9301)
    long.lease_ttl.FromSeconds(601)
    error = refused(stub.Register, long, auth(TOKEN_A))
    assert error.code() is Status.INVALID_ARGUMENT
    assert "above max_lease_ttl_ms 600000" in error.details()
    assert stored(redis_client, pool_name) == {}
    # An operator raises the caps; a pool's default lease must fit under its cap.
    r = admin(redis_url, "PATCH", f"/api/v1/pools/{pool_name}",
              json={"registration": {"max_lease_ttl_ms": 5_000}})  # fmt: skip
    assert r.status_code == 422 and "max_lease_ttl_ms" in r.json()["detail"]
    r = admin(redis_url, "PATCH", f"/api/v1/pools/{pool_name}",
              json={"registration": {"max_weight": 1000, "max_lease_ttl_ms": 3_600_000}})  # fmt: skip
    assert r.status_code == 200, r.text
    assert r.json()["registration"]["max_weight"] == 1000
    heavy.weight = 1000
    heavy.lease_ttl.FromSeconds(3600)
    assert stub.Register(heavy, metadata=auth(TOKEN_A), timeout=5).lease_ttl.seconds == 3600
    assert stored(redis_client, pool_name)["127.0.0.1:9301"].weight == 1000


def test_any_and_cidr_admit_other_addresses(
    stub: pb_grpc.RegistryStub, redis_url: str, redis_client: Any, pool_name: str
) -> None:
    registrar, fenced = f"{pool_name}-registrar", f"{pool_name}-fenced"
    create_pool(redis_url, registrar, registration={"address_policy": "any"})
    stub.Register(pb.RegisterRequest(pool=registrar, host="127.0.0.2", port=9401),
                  metadata=auth(TOKEN_A), timeout=5)  # fmt: skip
    assert set(stored(redis_client, registrar)) == {"127.0.0.2:9401"}

    r = admin(redis_url, "POST", "/api/v1/pools",
              json={"name": fenced, "registration": {"address_policy": "cidr"}})  # fmt: skip
    assert r.status_code == 422 and "needs networks" in r.json()["detail"]
    r = admin(redis_url, "POST", "/api/v1/pools", json={"name": fenced, "registration": {
        "address_policy": "cidr", "networks": ["127.0.0.1/8"]}})  # fmt: skip
    assert r.status_code == 422 and "host bits" in r.text
    nets = ["127.0.0.2/32", "10.0.0.0/8"]
    create_pool(redis_url, fenced, registration={"address_policy": "cidr", "networks": nets})
    stub.Register(pb.RegisterRequest(pool=fenced, host="127.0.0.2", port=9402),
                  metadata=auth(TOKEN_A), timeout=5)  # fmt: skip
    for host in ("127.0.0.3", ""):
        error = refused(stub.Register, pb.RegisterRequest(pool=fenced, host=host, port=9403),
                        auth(TOKEN_A))  # fmt: skip
        assert error.code() is Status.PERMISSION_DENIED
        assert "is not in the pool's networks (127.0.0.2/32, 10.0.0.0/8)" in error.details()
        assert f"(pool {fenced} has address_policy cidr)" in error.details()
    assert set(stored(redis_client, fenced)) == {"127.0.0.2:9402"}


@pytest.fixture
def certs(tmp_path: Path) -> Issued:
    # DNS SAN "localhost" (resolves to 127.0.0.1) and IP SAN 127.0.0.3.
    return issue(tmp_path / "certs", client_name="localhost", client_ips=("127.0.0.3",))


def test_certificate_policy_admits_the_certificates_addresses_only(
    redis_url: str, redis_client: Any, tmp_path: Path, pool_name: str, certs: Issued
) -> None:
    policy = tmp_path / "policy.json"
    policy.write_text(json.dumps({"pools": {pool_name: {"identities": ["localhost"]}}}))
    handle = BalancerHandle(
        redis_url, tls_cert=str(certs.server_cert), tls_key=str(certs.server_key),
        tls_client_ca=str(certs.ca), require_client_cert=True, insecure_registration=False,
        registration_policy=str(policy),
    )  # fmt: skip
    credentials = grpc.ssl_channel_credentials(
        certs.ca.read_bytes(), certs.client_key.read_bytes(), certs.client_cert.read_bytes()
    )
    try:
        create_pool(redis_url, pool_name, registration={"address_policy": "certificate"})
        with grpc.secure_channel(handle.address, credentials) as channel:
            stub = pb_grpc.RegistryStub(channel)
            by_name = stub.Register(pb.RegisterRequest(pool=pool_name, host="localhost",
                                                       port=9501), timeout=5)  # fmt: skip
            assert by_name.address == "127.0.0.1:9501"
            by_ip = stub.Register(pb.RegisterRequest(pool=pool_name, host="127.0.0.3",
                                                     port=9502), timeout=5)  # fmt: skip
            assert by_ip.address == "127.0.0.3:9502"
            # Not in the certificate, even the caller's own address.
            for host in ("127.0.0.2", "", "127.0.0.1"):
                error = refused(stub.Register, pb.RegisterRequest(pool=pool_name, host=host,
                                                                  port=9503))  # fmt: skip
                assert error.code() is Status.PERMISSION_DENIED
                assert "caller's client certificate" in error.details()
                assert "address_policy certificate" in error.details()
        owners = {b.owner for b in stored(redis_client, pool_name).values()}
        assert owners == {"mtls:localhost"}
    finally:
        handle.stop()


def test_a_backend_token_registers_its_one_address(
    stub: pb_grpc.RegistryStub, redis_url: str, redis_client: Any, pool_name: str
) -> None:
    """A registrar holding per-backend tokens (admin API) registers each
    token's address, whatever the pool's address_policy, and nothing else."""
    create_pool(redis_url, pool_name)  # address_policy peer
    base = f"/api/v1/pools/{pool_name}/backend-tokens"
    r = admin(redis_url, "POST", base, json={"address": "backend.example:9600"})
    assert r.status_code == 422 and "not a name" in r.text
    # An IPv4-mapped address is its IPv4 address, as the caller's is.
    r = admin(redis_url, "POST", base, json={"address": "[::ffff:127.0.0.2]:9600"})
    assert r.status_code == 201 and r.json()["address"] == "127.0.0.2:9600", r.text
    r = admin(redis_url, "POST", base, json={"address": "127.0.0.2:9600"})
    assert r.status_code == 201, r.text
    minted = r.json()
    token, token_id = minted["token"], minted["id"]
    second = admin(redis_url, "POST", base, json={"address": "127.0.0.2:9600"}).json()["token"]
    listed = admin(redis_url, "GET", base).json()["tokens"]
    assert {t["id"] for t in listed} >= {token_id} and token not in json.dumps(listed)
    assert token not in json.dumps(redis_client.hgetall(keys.backend_tokens(pool_name)))

    lease = stub.Register(pb.RegisterRequest(pool=pool_name, host="127.0.0.2", port=9600),
                          metadata=auth(token), timeout=5)  # fmt: skip
    assert lease.address == "127.0.0.2:9600"
    assert stored(redis_client, pool_name)["127.0.0.2:9600"].owner == f"backend-token:{token_id}"
    for host, port in (("127.0.0.2", 9601), ("127.0.0.1", 9600), ("", 9600)):
        error = refused(stub.Register, pb.RegisterRequest(pool=pool_name, host=host, port=port),
                        auth(token))  # fmt: skip
        assert error.code() is Status.PERMISSION_DENIED
        assert "is not 127.0.0.2:9600, the address this backend token" in error.details()
    # Another token for the same address does not take the live lease.
    error = refused(stub.Register, pb.RegisterRequest(pool=pool_name, host="127.0.0.2",
                                                      port=9600), auth(second))  # fmt: skip
    assert error.code() is Status.PERMISSION_DENIED and "another registrant" in error.details()
    # A token is for its pool only.
    create_pool(redis_url, f"{pool_name}-b")
    error = refused(stub.Register, pb.RegisterRequest(pool=f"{pool_name}-b", host="127.0.0.2",
                                                      port=9600), auth(token))  # fmt: skip
    assert error.code() is Status.UNAUTHENTICATED
    # Revoked, it renews nothing.
    beat = pb.HeartbeatRequest(pool=pool_name, backend_id=lease.backend_id, lease_id=lease.lease_id)
    stub.Heartbeat(beat, metadata=auth(token), timeout=5)
    assert admin(redis_url, "DELETE", f"{base}/{token_id}").status_code == 204
    assert admin(redis_url, "DELETE", f"{base}/{token_id}").status_code == 404
    assert refused(stub.Heartbeat, beat, auth(token)).code() is Status.UNAUTHENTICATED


@pytest.mark.parametrize(
    ("peer", "ip"),
    [
        ("ipv4:127.0.0.1:5555", "127.0.0.1"),
        ("ipv6:[::1]:5555", "::1"),
        ("ipv6:[::ffff:127.0.0.1]:5555", "127.0.0.1"),  # a dual-stack listener's IPv4 caller
        ("unix:/tmp/socket", None),
    ],
)
def test_the_callers_address_is_read_from_the_peer(peer: str, ip: str | None) -> None:
    assert peer_ip(peer) == ip


@pytest.mark.parametrize(
    ("name", "san", "match"),
    [
        ("a.backends.test", "a.backends.test", True),
        ("a.backends.test", "*.backends.test", True),
        ("a.b.backends.test", "*.backends.test", False),  # one label only
        ("backends.test", "*.backends.test", False),
        ("a.backends.test", "b.backends.test", False),
    ],
)
def test_a_dns_san_covers_exactly_its_name_or_one_label(name: str, san: str, match: bool) -> None:
    assert dns_san_matches(name, san) is match


def test_an_unknown_address_policy_admits_no_one(
    stub: pb_grpc.RegistryStub, secure: BalancerHandle, redis_client: Any, pool_name: str
) -> None:
    """A setting written past the admin API (a typo in Redis) fails closed."""
    config = PoolConfig(name=pool_name, registration=RegistrationRules(address_policy="anyy"))
    secure.run(secure.store.put_pool(config))
    try:
        request = pb.RegisterRequest(pool=pool_name, port=9700)
        error = refused(stub.Register, request, auth(TOKEN_A))
        assert error.code() is Status.PERMISSION_DENIED
        assert "unknown address_policy 'anyy'" in error.details()
        assert stored(redis_client, pool_name) == {}
    finally:
        # The session's Redis is shared: leave no pool that the admin API's
        # schema would not show.
        secure.run(secure.store.delete_pool(pool_name))
