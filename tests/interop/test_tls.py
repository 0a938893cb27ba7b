"""TLS and mTLS on the balancer's port, with certificates from
`lookaside certs`: a stock grpcio client finds the balancer through the
DNS responder and uses one channel credential (the lab CA) for the
balancer and the backends; registration by client certificate identity."""

from __future__ import annotations

import concurrent.futures
import json
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest
from google.protobuf.duration_pb2 import Duration
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from lookaside.certs import Issued, issue
from lookaside_proto.registry.v1 import registry_pb2 as pb
from lookaside_proto.registry.v1 import registry_pb2_grpc as pb_grpc
from lookaside_proto.routeguide.v1 import route_guide_pb2_grpc as rg_grpc
from lookaside_registry import keys
from lookaside_registry.model import PoolConfig
from tests.dns_responder.dns_handle import ZONE, DnsHandle
from tests.interop.helpers import GRPCLB_CONFIG, Backend, calls_until, wait_dns_caught_up
from tests.support import BalancerHandle

TOKEN = "tls-registration-token-0123456789"


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Issued:
    return issue(tmp_path_factory.mktemp("certs"), zone=ZONE)


def channel_credentials(certs: Issued, client: bool = False) -> grpc.ChannelCredentials:
    return grpc.ssl_channel_credentials(
        root_certificates=certs.ca.read_bytes(),
        private_key=certs.client_key.read_bytes() if client else None,
        certificate_chain=certs.client_cert.read_bytes() if client else None,
    )


class TlsBackend(Backend):
    def __init__(self, name: str, certs: Issued) -> None:
        super().__init__(name)
        self.certs = certs

    def start_on(self, port: int) -> TlsBackend:
        self.server = grpc.server(concurrent.futures.ThreadPoolExecutor(max_workers=8))
        rg_grpc.add_RouteGuideServicer_to_server(self, self.server)
        creds = grpc.ssl_server_credentials(
            [(self.certs.server_key.read_bytes(), self.certs.server_cert.read_bytes())]
        )
        self.port = self.server.add_secure_port(f"127.0.0.1:{port}", creds)
        self.server.start()
        return self


@pytest.fixture
def tls_balancer(redis_url: str, certs: Issued) -> Iterator[BalancerHandle]:
    handle = BalancerHandle(
        redis_url,
        tls_cert=str(certs.server_cert),
        tls_key=str(certs.server_key),
        insecure_registration=False,
        registration_token=TOKEN,
    )
    yield handle
    handle.stop()


def test_stock_client_through_dns_uses_one_credential_for_balancer_and_backends(
    tls_balancer: BalancerHandle,
    certs: Issued,
    pool_name: str,
    dns_factory: Callable[..., DnsHandle],
    redis_client,  # type: ignore[no-untyped-def]
) -> None:
    tls_balancer.run(tls_balancer.store.put_pool(PoolConfig(name=pool_name)))
    three = [TlsBackend(f"tls{i}", certs).start() for i in range(3)]
    try:
        creds = channel_credentials(certs)
        with grpc.secure_channel(tls_balancer.address, creds) as channel:
            stub = pb_grpc.RegistryStub(channel)
            for b in three:
                stub.Register(
                    pb.RegisterRequest(
                        pool=pool_name,
                        host="127.0.0.1",
                        port=b.port,
                        lease_ttl=Duration(seconds=600),
                    ),
                    metadata=[("authorization", f"Bearer {TOKEN}")],
                    timeout=10,
                )
        assert redis_client.hlen(keys.backends(pool_name)) == 3
        dns = dns_factory(tls_balancer)
        wait_dns_caught_up(dns, pool_name)
        target = f"dns://127.0.0.1:{dns.port}/{pool_name}.{ZONE}:{three[0].port}"
        options = [
            ("grpc.dns_enable_srv_queries", 1),
            ("grpc.service_config", GRPCLB_CONFIG),
            ("grpc.grpclb_fallback_timeout_ms", 60_000),
        ]
        with grpc.secure_channel(target, creds, options=options) as channel:
            rg = rg_grpc.RouteGuideStub(channel)
            calls_until(rg, lambda: all(b.calls for b in three), timeout=20)
        # The calls came through the balancer's list: each carried a token.
        assert all(set(b.tokens) - {""} for b in three)
    finally:
        for b in three:
            b.stop()


def test_plaintext_client_cannot_talk_to_the_tls_port(tls_balancer: BalancerHandle) -> None:
    with grpc.insecure_channel(tls_balancer.address) as channel:
        with pytest.raises(grpc.RpcError) as info:
            health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=3)
    assert info.value.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)


def test_health_and_reflection_over_tls(tls_balancer: BalancerHandle, certs: Issued) -> None:
    with grpc.secure_channel(tls_balancer.address, channel_credentials(certs)) as channel:
        status = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service="grpc.lb.v1.LoadBalancer"), timeout=5
        )
        assert status.status == health_pb2.HealthCheckResponse.SERVING
        request = reflection_pb2.ServerReflectionRequest(list_services="")
        (reply,) = reflection_pb2_grpc.ServerReflectionStub(channel).ServerReflectionInfo(
            iter([request]), timeout=5
        )
        names = {s.name for s in reply.list_services_response.service}
        assert {"grpc.lb.v1.LoadBalancer", "lookaside.registry.v1.Registry"} <= names


@pytest.fixture
def mtls_balancer(
    redis_url: str, certs: Issued, tmp_path: Path, pool_name: str
) -> Iterator[BalancerHandle]:
    policy = tmp_path / "policy.json"
    policy.write_text(
        json.dumps(
            {
                "pools": {
                    pool_name: {"identities": [f"*.{ZONE}"]},
                    f"{pool_name}-other": {"identities": ["someone-else"]},
                }
            }
        )
    )
    handle = BalancerHandle(
        redis_url,
        tls_cert=str(certs.server_cert),
        tls_key=str(certs.server_key),
        tls_client_ca=str(certs.ca),
        require_client_cert=True,
        insecure_registration=False,
        registration_policy=str(policy),
    )
    for name in (pool_name, f"{pool_name}-other"):
        handle.run(handle.store.put_pool(PoolConfig(name=name)))
    yield handle
    handle.stop()


def test_mtls_identity_admits_its_pools_only(
    mtls_balancer: BalancerHandle, certs: Issued, pool_name: str, redis_client
) -> None:  # type: ignore[no-untyped-def]
    request = pb.RegisterRequest(pool=pool_name, host="127.0.0.1", port=9500)
    # No client certificate: the handshake fails.
    with grpc.secure_channel(mtls_balancer.address, channel_credentials(certs)) as channel:
        with pytest.raises(grpc.RpcError) as info:
            pb_grpc.RegistryStub(channel).Register(request, timeout=5)
        assert info.value.code() is grpc.StatusCode.UNAVAILABLE
    with grpc.secure_channel(mtls_balancer.address, channel_credentials(certs, True)) as channel:
        stub = pb_grpc.RegistryStub(channel)
        lease = stub.Register(request, timeout=5)
        assert lease.lease_id
        other = pb.RegisterRequest(pool=f"{pool_name}-other", host="127.0.0.1", port=9501)
        with pytest.raises(grpc.RpcError) as info:
            stub.Register(other, timeout=5)
        assert info.value.code() is grpc.StatusCode.PERMISSION_DENIED
        assert "backend.lookaside.test" in info.value.details()
    assert redis_client.hlen(keys.backends(pool_name)) == 1
    assert redis_client.hlen(keys.backends(f"{pool_name}-other")) == 0
    events = [json.loads(e) for e in redis_client.lrange(keys.events(pool_name), 0, -1)]
    assert any(e.get("actor") == "registration:mtls:backend.lookaside.test" for e in events)


def registration_credentials(certs: Issued) -> grpc.ChannelCredentials:
    """TLS plus the registration token as call credentials
    (authorization: Bearer <token>)."""
    return grpc.composite_channel_credentials(
        channel_credentials(certs), grpc.access_token_call_credentials(TOKEN)
    )


def test_thin_client_over_tls_registers_with_a_token_and_balances(
    tls_balancer: BalancerHandle, certs: Issued, pool_name: str, redis_client
) -> None:  # type: ignore[no-untyped-def]
    from client_lib import LookasideChannel, Registration
    from tests.support import wait_until

    tls_balancer.run(tls_balancer.store.put_pool(PoolConfig(name=pool_name)))
    three = [TlsBackend(f"sync{i}", certs).start() for i in range(3)]
    registrations = [
        Registration(
            tls_balancer.address, pool=pool_name, port=b.port, host="127.0.0.1",
            credentials=registration_credentials(certs),
        ).start()
        for b in three
    ]  # fmt: skip
    try:
        assert redis_client.hlen(keys.backends(pool_name)) == 3
        creds = channel_credentials(certs)
        with LookasideChannel(
            pool_name, tls_balancer.address, credentials=creds, balancer_credentials=creds
        ) as channel:
            stub = rg_grpc.RouteGuideStub(channel)
            calls_until(stub, lambda: all(b.calls for b in three), timeout=20)
    finally:
        for r in registrations:
            r.stop(drain=False)
        for b in three:
            b.stop()
    wait_until(lambda: redis_client.hlen(keys.backends(pool_name)) == 0)


@pytest.mark.asyncio(loop_scope="session")
async def test_aio_thin_client_over_tls_registers_with_a_token_and_balances(
    tls_balancer: BalancerHandle, certs: Issued, pool_name: str, redis_client
) -> None:  # type: ignore[no-untyped-def]
    import asyncio

    from client_lib import AsyncRegistration
    from client_lib.aio import LookasideChannel
    from lookaside_proto.routeguide.v1 import route_guide_pb2 as rg

    tls_balancer.run(tls_balancer.store.put_pool(PoolConfig(name=pool_name)))
    two = [TlsBackend(f"aio{i}", certs).start() for i in range(2)]
    try:
        async with (
            AsyncRegistration(
                tls_balancer.address, pool=pool_name, port=two[0].port, host="127.0.0.1",
                credentials=registration_credentials(certs),
            ),
            AsyncRegistration(
                tls_balancer.address, pool=pool_name, port=two[1].port, host="127.0.0.1",
                credentials=registration_credentials(certs),
            ),
        ):  # fmt: skip
            assert redis_client.hlen(keys.backends(pool_name)) == 2
            creds = channel_credentials(certs)
            async with LookasideChannel(
                pool_name, tls_balancer.address, credentials=creds, balancer_credentials=creds
            ) as channel:
                await asyncio.wait_for(channel.channel_ready(), 10)
                stub = rg_grpc.RouteGuideStub(channel)

                async def until_both() -> None:
                    while not all(b.calls for b in two):
                        try:
                            await stub.GetFeature(rg.Point(), timeout=5)
                        except grpc.aio.AioRpcError:
                            await asyncio.sleep(0.05)

                await asyncio.wait_for(until_both(), 20)
    finally:
        for b in two:
            b.stop()


def test_thin_client_with_a_client_certificate_balances_through_an_mtls_balancer(
    mtls_balancer: BalancerHandle, certs: Issued, pool_name: str
) -> None:
    from client_lib import LookasideChannel

    two = [TlsBackend(f"mtls{i}", certs).start() for i in range(2)]
    try:
        for b in two:
            mtls_balancer.run(
                mtls_balancer.store.register(
                    pool=pool_name, host="127.0.0.1", ip="127.0.0.1", port=b.port
                )
            )
        with LookasideChannel(
            pool_name,
            mtls_balancer.address,
            credentials=channel_credentials(certs),
            balancer_credentials=channel_credentials(certs, client=True),
        ) as channel:
            calls_until(rg_grpc.RouteGuideStub(channel), lambda: all(b.calls for b in two), 20)
    finally:
        for b in two:
            b.stop()


def test_tokens_over_plaintext_are_refused_from_untrusted_networks(
    redis_url: str, certs: Issued, pool_name: str, redis_client
) -> None:  # type: ignore[no-untyped-def]
    # Loopback is trusted by default (the lab); here only 10.0.0.0/8 is, so
    # this test's 127.0.0.1 stands for a client on another network.
    request = pb.RegisterRequest(pool=pool_name, host="127.0.0.1", port=9510)
    metadata = [("authorization", f"Bearer {TOKEN}")]
    plain = BalancerHandle(
        redis_url, insecure_registration=False, registration_token=TOKEN,
        trusted_networks="10.0.0.0/8",
    )  # fmt: skip
    tls = BalancerHandle(
        redis_url, insecure_registration=False, registration_token=TOKEN,
        trusted_networks="10.0.0.0/8", tls_cert=str(certs.server_cert),
        tls_key=str(certs.server_key),
    )  # fmt: skip
    try:
        plain.run(plain.store.put_pool(PoolConfig(name=pool_name)))
        with grpc.insecure_channel(plain.address) as channel:
            with pytest.raises(grpc.RpcError) as info:
                pb_grpc.RegistryStub(channel).Register(request, metadata=metadata, timeout=5)
        assert info.value.code() is grpc.StatusCode.UNAUTHENTICATED
        assert "over plaintext from 127.0.0.1" in info.value.details()
        assert "--trusted-networks" in info.value.details()
        assert redis_client.hlen(keys.backends(pool_name)) == 0
        # The same token over TLS is fine.
        with grpc.secure_channel(tls.address, registration_credentials(certs)) as channel:
            assert pb_grpc.RegistryStub(channel).Register(request, timeout=5).lease_id
        assert redis_client.hlen(keys.backends(pool_name)) == 1
    finally:
        plain.stop()
        tls.stop()


def test_trusted_networks_must_be_networks(redis_url: str) -> None:
    with pytest.raises(ValueError, match="'10.0.0.300/8' is not a network"):
        BalancerHandle(redis_url, trusted_networks="127.0.0.0/8, 10.0.0.300/8")
