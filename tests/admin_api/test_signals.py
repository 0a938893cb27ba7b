"""GET /api/v1/pools/{pool}/signals: golden signals from heartbeats and
thin-client outcomes, against a real balancer, a real demo backend and the
test Redis."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Iterator
from typing import Any

import grpc
import httpx
import pytest

from admin_api.metrics import REGISTRY
from admin_api.routes.signals import _sample_forever
from admin_api.signals import Sampler, percentile
from client_lib import AsyncRegistration
from lookaside.demo.server import RouteGuideServer
from lookaside.demo.settings import ServerSettings
from lookaside_proto.routeguide.v1 import route_guide_pb2 as rg
from lookaside_proto.routeguide.v1 import route_guide_pb2_grpc as rg_grpc
from lookaside_registry import keys
from lookaside_registry.asyncutil import cancel_and_wait
from lookaside_registry.memory import MemoryStore
from lookaside_registry.model import PoolConfig
from lookaside_registry.outlier import outcome_fields
from lookaside_registry.store import RegistryStore
from tests.admin_api.conftest import AUTH
from tests.support import BalancerHandle, LoopThread, wait_until

FAST_HEALTH = dict(
    health_interval_ms=100, health_timeout_ms=300, unhealthy_threshold=2, healthy_threshold=1
)


@pytest.fixture
def checked(redis_url: str) -> Iterator[BalancerHandle]:
    handle = BalancerHandle(redis_url, health_checks=True, replica_id="signals")
    yield handle
    handle.stop()


def _backend(redis_url: str, pool: str) -> dict[str, object]:
    import redis

    client = redis.Redis.from_url(redis_url, decode_responses=True)
    try:
        [raw] = client.hvals(keys.backends(pool))
    finally:
        client.close()
    backend: dict[str, object] = json.loads(raw)
    return backend


def test_health_probes_are_not_load(
    checked: BalancerHandle, redis_url: str, pool_name: str
) -> None:
    """An idle backend under the balancer's health checks (Check and a
    Watch stream) heartbeats 0 in flight and 0 calls/s; real calls count."""
    checked.run(
        checked.store.put_pool(PoolConfig.from_flat(pool_name, lease_ttl_ms=1500, **FAST_HEALTH))
    )
    loop = LoopThread("demo")
    server = RouteGuideServer(ServerSettings(listen="127.0.0.1:0", grace=0.0))
    port = loop.run(server.start())
    reg = AsyncRegistration(checked.address, pool_name, port, host="127.0.0.1", meter=server.meter)
    try:
        loop.run(reg.start())
        wait_until(
            lambda: any(p == pool_name for p, _ in list(checked.server.checker.probers)), timeout=10
        )
        first = int(str(_backend(redis_url, pool_name)["last_heard_ms"]))
        # Two heartbeats after probing began: each covers an interval with probes in it.
        wait_until(
            lambda: int(str(_backend(redis_url, pool_name)["last_heard_ms"])) > first, timeout=10
        )
        second = int(str(_backend(redis_url, pool_name)["last_heard_ms"]))
        wait_until(
            lambda: int(str(_backend(redis_url, pool_name)["last_heard_ms"])) > second, timeout=10
        )
        load = _backend(redis_url, pool_name)["load"]
        assert isinstance(load, dict)
        assert load["in_flight"] == 0 and load["qps"] == 0, load
        assert server.meter.total == 0

        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = rg_grpc.RouteGuideStub(channel)
            for _ in range(20):
                stub.GetFeature(rg.Point(latitude=409146138, longitude=-746188906), timeout=5)
        assert server.meter.total == 20
        third = int(str(_backend(redis_url, pool_name)["last_heard_ms"]))
        wait_until(
            lambda: int(str(_backend(redis_url, pool_name)["last_heard_ms"])) > third, timeout=10
        )
        busy = _backend(redis_url, pool_name)["load"]
        assert isinstance(busy, dict) and busy["qps"] > 0 and busy["latency_ms"] > 0
    finally:
        loop.run(reg.stop())
        loop.run(server.stop(0))
        loop.close()


@pytest.mark.asyncio(loop_scope="session")
async def test_signals_from_outcomes_and_heartbeats(
    client: httpx.AsyncClient, store: RegistryStore, pool: str
) -> None:
    leases = []
    for port, latency in ((9501, 2.0), (9502, 8.0)):
        lease = await store.register(
            pool=pool, host="127.0.0.1", ip="127.0.0.1", port=port, lease_ttl_ms=600_000
        )
        await store.heartbeat(
            pool,
            lease.backend_id,
            lease.lease_id,
            {"qps": 50.0, "in_flight": 2, "latency_ms": latency, "utilization": -1.0},
        )
        leases.append(lease)
    static = await client.post(
        f"/api/v1/pools/{pool}/backends", json={"host": "127.0.0.1", "port": 9503}, headers=AUTH
    )
    assert static.status_code == 201
    good, bad = (lease.backend_id for lease in leases)
    sampler = Sampler(store)
    snap = await store.snapshot(pool)
    assert snap is not None
    await sampler.record(snap, now=time.time() - 20)  # the baseline
    fields = {**outcome_fields(good, 100, 100, 0), **outcome_fields(bad, 100, 80, 5)}
    assert await store.add_reports(pool, f"{pool}-outcomes", int(time.time() // 10), {}, fields)
    await sampler.record(snap)

    r = await client.get(f"/api/v1/pools/{pool}/signals", params={"minutes": 5}, headers=AUTH)
    assert r.status_code == 200, r.text
    body = r.json()
    rows = {b["address"]: b for b in body["backends"]}
    assert rows["127.0.0.1:9501"]["success_rate"] == 1.0
    assert rows["127.0.0.1:9502"]["success_rate"] == 0.8
    assert body["success_rate"] == 0.9
    assert rows["127.0.0.1:9502"]["latency_p99_ms"] == 8.0
    assert body["latency_p50_ms"] == 2.0 and body["latency_p99_ms"] == 8.0
    # Unknown stays unknown: no utilization reported, a static backend with
    # no heartbeat and no client outcomes.
    assert rows["127.0.0.1:9501"]["utilization"] is None
    assert rows["127.0.0.1:9503"]["calls_per_s"] is None
    assert rows["127.0.0.1:9503"]["success_rate"] is None
    assert rows["127.0.0.1:9503"]["latency_p50_ms"] is None
    assert len(body["history"]) == 2
    assert len(await store.signal_history(pool)) == 2


@pytest.mark.asyncio(loop_scope="session")
async def test_signals_of_an_unknown_pool_is_404(client: httpx.AsyncClient) -> None:
    r = await client.get("/api/v1/pools/no-such-pool/signals", headers=AUTH)
    assert r.status_code == 404
    r = await client.get("/api/v1/pools/no-such-pool/signals", params={"minutes": 99}, headers=AUTH)
    assert r.status_code == 422


def test_percentile_weights_by_calls() -> None:
    assert percentile([], 0.5) is None
    assert percentile([(1.0, 99), (100.0, 1)], 0.5) == 1.0
    assert percentile([(1.0, 98), (100.0, 2)], 0.99) == 100.0


@pytest.mark.asyncio(loop_scope="session")
async def test_the_sampler_logs_a_lost_registry_once_and_keeps_going(
    caplog: pytest.LogCaptureFixture,
) -> None:
    memory = MemoryStore()
    await memory.put_pool(PoolConfig(name="sampled"))
    memory.available = False
    caplog.set_level(logging.INFO, logger="lookaside.admin")
    sampler = Sampler(memory)
    task = asyncio.create_task(_sample_forever(sampler, period=0.02))
    try:

        def failed() -> list[logging.LogRecord]:
            return [r for r in caplog.records if "sampling failed" in r.getMessage()]

        deadline = time.monotonic() + 10
        while not failed():
            assert time.monotonic() < deadline, "the sampler logged no failure"
            await asyncio.sleep(0.02)
        await asyncio.sleep(0.3)  # more failed rounds, logged no more
        assert len(failed()) == 1 and "Unavailable" not in failed()[0].getMessage()
        memory.available = True
        deadline = time.monotonic() + 5
        while not await memory.signal_history("sampled"):
            assert time.monotonic() < deadline, "the sampler did not resume"
            await asyncio.sleep(0.02)
        assert any("sampling resumed" in r.getMessage() for r in caplog.records)
        assert not task.done()
    finally:
        await cancel_and_wait([task])
    assert task.cancelled()


@pytest.mark.asyncio(loop_scope="session")
async def test_a_steady_load_reads_steady_and_its_success_rate_is_always_known() -> None:
    """Three clients report every 10 s (at their own phases) 1,000 calls
    each, 1% of one backend's lost; two samplers (as two admin replicas)
    sample every 5 s. Every sample shows 300 calls/s and a success rate:
    reading the counters destroys nothing, and closed buckets do not
    zigzag with the phase of reports and samples."""
    memory = MemoryStore()
    pool = "steady"
    await memory.put_pool(PoolConfig(name=pool, report_interval_ms=10_000))
    lease = await memory.register(pool=pool, host="h", ip="10.1.0.1", port=80)
    bid = lease.backend_id
    samplers = [Sampler(memory), Sampler(memory)]
    start = (time.time() // 10) * 10 - 600
    phases = (1.3, 4.7, 8.2)
    reports = sorted(start + p + 10 * k for p in phases for k in range(60))
    sent = 0
    samples: list[list[dict[str, Any]]] = [[], []]
    for step in range(1, 100):
        now = start + 5 * step + 0.4
        while sent < len(reports) and reports[sent] <= now - 1:  # flushed within a second
            at = reports[sent]
            fields = {"reports": 1, "started": 1000, "finished": 1000}
            outcomes = outcome_fields(bid, 1000, 990, 0)
            assert await memory.add_reports(pool, f"r{sent}", int(at // 10), fields, outcomes)
            sent += 1
        snap = await memory.snapshot(pool)
        assert snap is not None
        for sampler, out in zip(samplers, samples, strict=True):
            out.append(await sampler.sample(snap, now))
    calls = REGISTRY.get_sample_value(
        "lookaside_admin_backend_calls_total", {"pool": pool, "backend": bid, "result": "received"}
    )
    seen = sum(s["backends"][bid]["finished"] for out in samples for s in out)
    assert calls == sum(s["backends"][bid]["received"] for out in samples for s in out)
    assert seen == 2 * (sent - 1) * 1000  # each sampler, every report after its first reading
    for out in samples:
        settled = out[6:]  # after the first window
        assert {s["calls_per_s"] for s in settled} == {300.0}
        assert all(s["success_rate"] == 0.99 for s in out[1:])
        assert all(s["backends"][bid]["success_rate"] == 0.99 for s in out[1:])
