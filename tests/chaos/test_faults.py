"""Bounded fault tests: the chaos suite's lab (Redis, two balancer replicas,
the DNS responder, 3 backends, a thin sync, a thin asyncio and a stock
grpcio client, all separate processes on loopback) with a few seconds per
fault. They count failed calls, never timings; the full table with its
figures is `lookaside chaos` (docs/reliability.md)."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
import redis

from lookaside.chaos.cluster import ChaosLab, chaos_pool
from lookaside.chaos.report import Outcome
from lookaside.chaos.run import run_scenario
from lookaside_registry import keys
from lookaside_registry.model import PoolConfig
from tests.chaos.labs import CLIENTS, running


@pytest.fixture(scope="module")
def lab() -> Iterator[ChaosLab]:
    yield from running(ChaosLab(backends=3, clients=CLIENTS, rate=40.0, call_timeout=2.0))


def by_client(outcomes: list[Outcome]) -> dict[str, Outcome]:
    seen = {o.client: o for o in outcomes}
    assert set(seen) == set(CLIENTS)
    for o in outcomes:
        assert o.calls >= 20, o  # the load really ran through the window
    return seen


def failures(outcomes: dict[str, Outcome]) -> dict[str, dict[str, int]]:
    return {k: dict(o.codes) for k, o in outcomes.items() if o.failed}


@pytest.mark.timeout(60)
def test_the_lab_runs_the_production_profile(lab: ChaosLab) -> None:
    """TLS on the balancers and backends (plaintext refused), health checks
    that reach the TLS backends (none ever unhealthy), registration with
    the pool's own token, health checks and outlier detection on."""
    import json

    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    assert lab.ca
    request = health_pb2.HealthCheckRequest()
    for proc in [*lab.balancers, *lab.backends]:
        address = f"127.0.0.1:{proc.port}"
        with grpc.insecure_channel(address) as channel:
            with pytest.raises(grpc.RpcError):
                health_pb2_grpc.HealthStub(channel).Check(request, timeout=3)
        creds = grpc.ssl_channel_credentials(open(lab.ca, "rb").read())  # noqa: SIM115
        with grpc.secure_channel(address, creds) as channel:
            reply = health_pb2_grpc.HealthStub(channel).Check(request, timeout=10)
            assert reply.status == health_pb2.HealthCheckResponse.SERVING, proc.name
    client = redis.Redis.from_url(lab.redis.url, decode_responses=True)
    try:
        events = [json.loads(e) for e in client.lrange(keys.events(lab.pool), 0, -1)]
        config = PoolConfig.from_json(client.get(keys.config(lab.pool)))
    finally:
        client.close()
    registered = {e["actor"] for e in events if e["kind"] == "registered"}
    # One principal: the pool's token (its id after the "#").
    assert {a.partition("#")[0] for a in registered} == {
        f"registration:pool-token:{lab.pool}"
    } and len(registered) == 1, registered
    assert not [e for e in events if e["kind"] == "unhealthy"], events
    assert config.health_checks.enabled and config.outlier_detection.enabled
    assert lab.serving_count() == 3


@pytest.mark.timeout(90)
def test_redis_paused_loses_no_call(lab: ChaosLab) -> None:
    pid = lab.redis.pid
    outcomes = by_client(run_scenario(lab, "redis-pause", 3.0, 2.0))
    assert lab.redis.pid == pid  # the same process, stopped and continued
    assert failures(outcomes) == {}


@pytest.mark.timeout(90)
def test_redis_restarted_empty_loses_no_call(lab: ChaosLab) -> None:
    pid = lab.redis.pid
    outcomes = by_client(run_scenario(lab, "redis-restart-empty", 0.0, 3.0))
    assert lab.redis.pid != pid
    assert failures(outcomes) == {}
    assert lab.serving_count() == 3  # the backends registered again
    # and the replicas' state file brings the pool's settings back (the
    # keepers look every 2 s)
    client = redis.Redis.from_url(lab.redis.url)
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        raw = client.get(keys.config(lab.pool))
        if raw is not None and PoolConfig.from_json(raw) == chaos_pool(lab.pool):
            break
        time.sleep(0.2)
    client.close()
    assert raw is not None and PoolConfig.from_json(raw) == chaos_pool(lab.pool)


@pytest.mark.timeout(90)
def test_replica_killed_loses_no_call(lab: ChaosLab) -> None:
    pid = lab.balancers[0].pid
    outcomes = by_client(run_scenario(lab, "replica-kill", 1.0, 2.0))
    assert lab.balancers[0].pid != pid
    assert failures(outcomes) == {}


@pytest.mark.timeout(90)
def test_pubsub_connections_dropped_lose_no_call(lab: ChaosLab) -> None:
    outcomes = run_scenario(lab, "pubsub-drop", 2.0, 1.0)
    assert "0 pub/sub" not in outcomes[0].note  # connections were really dropped
    assert failures(by_client(outcomes)) == {}


@pytest.mark.timeout(90)
def test_backend_killed_loses_no_call(lab: ChaosLab) -> None:
    # The clients have a retryPolicy on GetFeature (lookaside.chaos.load):
    # a call on the dying backend's connection goes again elsewhere.
    pid = lab.backends[0].pid
    outcomes = by_client(run_scenario(lab, "backend-kill", 3.0, 1.0))
    assert lab.backends[0].pid != pid  # repaired: started again
    assert failures(outcomes) == {}
