"""The admin API over the in-memory registry port: the same answers as over
Redis, without one (fast), including 503 when the registry is away."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

import httpx
import pytest
import pytest_asyncio

from admin_api.app import create_app
from admin_api.signals import Sampler
from lookaside_registry.memory import MemoryStore
from lookaside_registry.outlier import outcome_fields
from tests.admin_api.conftest import AUTH, make_settings

pytestmark = pytest.mark.asyncio(loop_scope="session")


@pytest_asyncio.fixture(loop_scope="session")
async def memory() -> MemoryStore:
    return MemoryStore()


@pytest_asyncio.fixture(loop_scope="session")
async def api(memory: MemoryStore) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(make_settings("redis://127.0.0.1:1/0"), store=memory)
    transport = httpx.ASGITransport(app=app, client=("127.0.0.7", 40000))
    async with httpx.AsyncClient(transport=transport, base_url="http://admin.test") as client:
        yield client


async def test_pool_and_backend_lifecycle(api: httpx.AsyncClient, memory: MemoryStore) -> None:
    r = await api.post("/api/v1/pools", json={"name": "mem"}, headers=AUTH)
    assert r.status_code == 201, r.text
    assert (await api.post("/api/v1/pools", json={"name": "mem"}, headers=AUTH)).status_code == 409
    version = r.json()["config_version"]
    r = await api.patch("/api/v1/pools/mem", json={"fallback": True},
                        headers={**AUTH, "If-Match": str(version)})  # fmt: skip
    assert r.status_code == 200 and r.json()["fallback"] is True
    r = await api.patch("/api/v1/pools/mem", json={"fallback": False},
                        headers={**AUTH, "If-Match": str(version)})  # fmt: skip
    assert r.status_code == 409 and r.json()["current_version"] == version + 1

    r = await api.post("/api/v1/pools/mem/backends", json={"host": "127.0.0.1", "port": 81},
                       headers=AUTH)  # fmt: skip
    assert r.status_code == 201, r.text
    bid = r.json()["id"]
    r = await api.post(f"/api/v1/pools/mem/backends/{bid}/disable", headers=AUTH)
    assert r.status_code == 200 and r.json()["state"] == "disabled"
    r = await api.post(f"/api/v1/pools/mem/backends/{bid}/reinstate", headers=AUTH)
    assert r.status_code == 409 and "cannot move it" in r.json()["detail"]
    assert await memory.holds("mem") == {bid: "disabled"}
    r = await api.delete("/api/v1/pools/mem", headers=AUTH)
    assert r.status_code == 409 and "live backend" in r.json()["detail"]
    r = await api.delete("/api/v1/pools/mem?force=true", headers=AUTH)
    assert r.status_code == 204
    assert (await api.get("/api/v1/pools/mem", headers=AUTH)).status_code == 404


async def test_signals_over_the_memory_port(api: httpx.AsyncClient, memory: MemoryStore) -> None:
    r = await api.post("/api/v1/pools", json={"name": "sig"}, headers=AUTH)
    assert r.status_code == 201, r.text
    lease = await memory.register(pool="sig", host="h", ip="127.0.0.1", port=82)
    await memory.heartbeat("sig", lease.backend_id, lease.lease_id, {"qps": 4.0, "latency_ms": 2.0})
    sampler = Sampler(memory)
    snap = await memory.snapshot("sig")
    assert snap is not None
    now = time.time()
    await sampler.record(snap, now - 10)
    outcomes = outcome_fields(lease.backend_id, 10, 9, 0)
    await memory.add_reports(
        "sig", "x", int(now // 10) - 1, {"reports": 1, "finished": 20}, outcomes
    )
    await sampler.record(snap, now)
    r = await api.get("/api/v1/pools/sig/signals", headers=AUTH)
    assert r.status_code == 200, r.text
    body = r.json()
    assert [p["latency_ms"] for p in body["history"]] == [2.0, 2.0]
    assert body["success_rate"] == 0.9 and body["backends"][0]["latency_p50_ms"] == 2.0
    assert body["reported"] == [
        {"ts_ms": (int(now // 10) - 1) * 10_000, "calls_per_s": 2.0, "success_rate": None,
         "latency_ms": None}
    ]  # fmt: skip
    memory.available = False
    try:
        r = await api.get("/api/v1/pools/sig/signals", headers=AUTH)
        assert r.status_code == 503 and "registry unavailable" in r.json()["detail"]
    finally:
        memory.available = True


async def test_registry_away_is_503(api: httpx.AsyncClient, memory: MemoryStore) -> None:
    memory.available = False
    try:
        r = await api.get("/api/v1/pools", headers=AUTH)
        assert r.status_code == 503 and "registry unavailable" in r.json()["detail"]
        assert (await api.get("/readyz")).status_code == 503
    finally:
        memory.available = True
    assert (await api.get("/readyz")).status_code == 200
