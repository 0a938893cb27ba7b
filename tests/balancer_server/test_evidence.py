"""Forged evidence cannot eject a healthy backend.

A BalanceLoad client reads the list's tokens and reports every call to one
backend as lost (timed out, failed to send, and dropped under its token).
Real balancer, Redis and backends; the forger is a stock grpcio stream
that appends the Lookaside ClientStatsExtension to its ClientStats by hand.
Health checking is off, so only reports could eject."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from balancer_server import metrics
from client_lib import LookasideChannel
from lookaside.certs import Issued, issue
from lookaside_proto.lb.v1 import backend_stats_pb2 as bs
from lookaside_proto.lb.v1 import load_balancer_pb2 as lb
from lookaside_proto.routeguide.v1 import route_guide_pb2 as rg
from lookaside_proto.routeguide.v1 import route_guide_pb2_grpc as rg_grpc
from lookaside_registry import keys
from lookaside_registry.model import PoolConfig
from tests.support import (
    BalancerHandle,
    LbStream,
    RouteGuideBackend,
    register_all,
    start_backends,
    wait_until,
)

CLIENT_TOKEN = "client-token-for-evidence-tests"
FAST = dict(
    health_checks=False,
    report_interval_ms=1000,
    outlier_interval_ms=1000,
    outlier_base_ejection_ms=60_000,
    outlier_min_hosts=3,
    outlier_request_volume=5,
    outlier_max_ejection_percent=50,
)


def forged(tokens: dict[str, str], victim: str) -> lb.LoadBalanceRequest:
    """100 calls per backend, every one to `victim` lost: timed out with
    nothing from it, also claimed as failed to send and as drops."""
    stats = lb.ClientStats(
        num_calls_started=300,
        num_calls_finished=300,
        num_calls_finished_with_client_failed_to_send=100,
        num_calls_finished_known_received=200,
        calls_finished_with_drop=[
            lb.ClientStatsPerToken(load_balance_token=tokens[victim], num_calls=100)
        ],
    )
    entries = [
        bs.BackendCallStats(
            load_balance_token=token,
            num_calls_finished=100,
            num_calls_finished_known_received=0 if bid == victim else 100,
            num_calls_finished_with_client_failed_to_send=100 if bid == victim else 0,
            num_calls_finished_with_deadline_exceeded=100 if bid == victim else 0,
        )
        for bid, token in tokens.items()
    ]
    stats.MergeFromString(bs.ClientStatsExtension(calls_per_backend=entries).SerializeToString())
    return lb.LoadBalanceRequest(client_stats=stats)


def open_stream(
    balancer: BalancerHandle, pool: str, ids: dict[int, str], token: str | None = None
) -> tuple[LbStream, dict[str, str]]:
    metadata = (("authorization", f"Bearer {token}"),) if token else None
    stream = LbStream(balancer.address, pool, metadata=metadata)
    listed = stream.next_list()
    by_port = {int(addr.rpartition(":")[2]): tok for addr, tok, drop in listed if not drop}
    return stream, {ids[port]: tok for port, tok in by_port.items()}


def lie_for(streams: list[tuple[LbStream, dict[str, str]]], victim: str, seconds: float) -> None:
    """Every stream reports the forgery once a second for `seconds`."""
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        for stream, tokens in streams:
            stream.send(forged(tokens, victim))
        time.sleep(1.05)


def state(redis_client, pool: str, backend_id: str) -> str:  # type: ignore[no-untyped-def]
    return json.loads(redis_client.hget(keys.backends(pool), backend_id))["state"]  # type: ignore[no-any-return]


def unagreed(pool: str) -> float:
    value = metrics.REGISTRY.get_sample_value(
        "lookaside_balancer_outlier_unagreed_total", {"pool": pool}
    )
    return value or 0.0


def test_one_forging_stream_cannot_eject_a_healthy_backend(
    balancer: BalancerHandle, backends: list[RouteGuideBackend], pool_name: str, redis_client
) -> None:  # type: ignore[no-untyped-def]
    three = start_backends(backends, 3)
    balancer.run(balancer.store.put_pool(PoolConfig.from_flat(pool_name, **FAST)))  # type: ignore[arg-type]
    ids = register_all(balancer, pool_name, three)
    victim = ids[three[0].port]
    stream, tokens = open_stream(balancer, pool_name, ids)
    try:
        # The judge saw the claims and refused them for want of agreement,
        # in two of its rounds (the stream lies until then: a judge slowed
        # by a busy machine still sees claims in its round).
        end = time.monotonic() + 30
        while unagreed(pool_name) < 2:
            assert time.monotonic() < end, "the judge never refused the claims twice"
            lie_for([(stream, tokens)], victim, 1)
        assert state(redis_client, pool_name, victim) == "serving"
        # The claims were counted for display, cut to the stream's share.
        raw = redis_client.hgetall(keys.outcomes(pool_name))
        assert int(raw[f"{victim}:f"]) > 0 and f"{victim}:r" not in raw
    finally:
        stream.close()
    events = [e["kind"] for e in balancer.run(balancer.store.events(pool_name))]
    assert "ejected" not in events


@pytest.fixture
def guarded_balancer(redis_url: str, tmp_path: Path, pool_name: str) -> Iterator[BalancerHandle]:
    policy = tmp_path / "policy.json"
    policy.write_text(
        json.dumps(
            {
                "create_pools": True,
                "pools": {
                    pool_name: {
                        "client_tokens": [CLIENT_TOKEN],
                        "require_client_credentials": True,
                    }
                },
            }
        )
    )
    handle = BalancerHandle(redis_url, registration_policy=str(policy))
    yield handle
    handle.stop()


def test_anonymous_reports_are_shown_but_never_eject_where_credentials_are_required(
    guarded_balancer: BalancerHandle,
    backends: list[RouteGuideBackend],
    pool_name: str,
    redis_client,  # type: ignore[no-untyped-def]
) -> None:
    balancer = guarded_balancer
    three = start_backends(backends, 3)
    balancer.run(balancer.store.put_pool(PoolConfig.from_flat(pool_name, **FAST)))  # type: ignore[arg-type]
    ids = register_all(balancer, pool_name, three)
    victim = ids[three[0].port]
    # A token that is not the pool's is refused before any list.
    bad = LbStream(balancer.address, pool_name, metadata=(("authorization", "Bearer " + "x" * 20),))
    with pytest.raises(grpc.RpcError) as refused:
        bad.next()
    assert refused.value.code() is grpc.StatusCode.UNAUTHENTICATED
    assert "client token is not valid" in (refused.value.details() or "")
    bad.close()
    # Two anonymous streams agree: their reports show, and eject no one.
    anonymous = [open_stream(balancer, pool_name, ids) for _ in range(2)]
    try:
        lie_for(anonymous, victim, 4)
        wait_until(lambda: int(redis_client.hget(keys.outcomes(pool_name), f"{victim}:f") or 0) > 0)
        assert state(redis_client, pool_name, victim) == "serving"
        assert not redis_client.hexists(keys.outcomes(pool_name), f"{victim}:ef")
        shown = metrics.REGISTRY.get_sample_value(
            "lookaside_balancer_load_reports_display_only_total", {"pool": pool_name}
        )
        assert shown is not None and shown >= 4
    finally:
        for stream, _ in anonymous:
            stream.close()
    # Two streams that bring the pool's client token and agree do eject.
    trusted = [open_stream(balancer, pool_name, ids, CLIENT_TOKEN) for _ in range(2)]
    try:
        deadline = time.monotonic() + 20
        while state(redis_client, pool_name, victim) != "ejected":
            assert time.monotonic() < deadline, "not ejected within 20s"
            lie_for(trusted, victim, 1)
    finally:
        for stream, _ in trusted:
            stream.close()
    ejected = next(
        e for e in balancer.run(balancer.store.events(pool_name)) if e["kind"] == "ejected"
    )
    assert "reported by 2 client streams" in ejected["detail"]


@pytest.fixture(params=["token", "certificate"])
def tls_guarded_balancer(
    request: pytest.FixtureRequest, redis_url: str, tmp_path: Path, pool_name: str
) -> Iterator[tuple[BalancerHandle, Issued, str]]:
    """A TLS balancer whose pool requires client credentials: a client
    token (TLS, no client CA: anonymous clients get lists too), or a client
    certificate (mTLS: grpcio verifies only certificates it requires)."""
    certs = issue(tmp_path / "certs", client_name="client-1.lookaside.test")
    policy = tmp_path / "policy.json"
    rule = {
        "client_tokens": [CLIENT_TOKEN],
        "client_identities": ["client-*.lookaside.test"],
        "require_client_credentials": True,
    }
    policy.write_text(json.dumps({"create_pools": True, "pools": {pool_name: rule}}))
    mtls = {"tls_client_ca": str(certs.ca)} if request.param == "certificate" else {}
    handle = BalancerHandle(
        redis_url,
        registration_policy=str(policy),
        tls_cert=str(certs.server_cert),
        tls_key=str(certs.server_key),
        **mtls,
    )
    yield handle, certs, request.param
    handle.stop()


def test_thin_clients_bring_a_token_or_a_certificate_and_their_reports_count(
    tls_guarded_balancer: tuple[BalancerHandle, Issued, str],
    backends: list[RouteGuideBackend],
    pool_name: str,
    redis_client,  # type: ignore[no-untyped-def]
) -> None:
    balancer, certs, kind = tls_guarded_balancer
    one = start_backends(backends, 1)
    balancer.run(balancer.store.put_pool(PoolConfig.from_flat(pool_name, **FAST)))  # type: ignore[arg-type]
    bid = register_all(balancer, pool_name, one)[one[0].port]
    ca = certs.ca.read_bytes()
    if kind == "token":
        tls = grpc.ssl_channel_credentials(ca)
        token = grpc.access_token_call_credentials(CLIENT_TOKEN)
        cases = [(tls, False), (grpc.composite_channel_credentials(tls, token), True)]
    else:
        key, cert = certs.client_key.read_bytes(), certs.client_cert.read_bytes()
        cases = [(grpc.ssl_channel_credentials(ca, key, cert), True)]

    def counts() -> tuple[int, int]:
        raw = redis_client.hgetall(keys.outcomes(pool_name))
        return int(raw.get(f"{bid}:f", 0)), int(raw.get(f"{bid}:ef", 0))

    for creds, counted in cases:
        shown, evidence = counts()
        with LookasideChannel(pool_name, balancer.address, balancer_credentials=creds) as channel:
            assert channel.wait_for_list(10)
            stub = rg_grpc.RouteGuideStub(channel)
            for _ in range(5):
                stub.GetFeature(rg.Point(), timeout=5)
            wait_until(lambda: counts()[0] >= shown + 5, timeout=15)  # noqa: B023
        assert (counts()[1] >= evidence + 5) is counted
