"""The admin API over the in-memory registry port: the same answers as over
Redis, without one (fast), including 503 when the registry is away."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest
import pytest_asyncio

from admin_api.app import create_app
from lookaside.registry.memory import MemoryStore
from tests.admin_api.conftest import AUTH, make_settings

pytestmark = pytest.mark.asyncio(loop_scope="session")


@pytest_asyncio.fixture(loop_scope="session")
async def memory() -> MemoryStore:
    return MemoryStore()


@pytest_asyncio.fixture(loop_scope="session")
async def api(memory: MemoryStore) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(make_settings("redis://127.0.0.1:1/0"), store=memory)  # type: ignore[arg-type]
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


async def test_registry_away_is_503(api: httpx.AsyncClient, memory: MemoryStore) -> None:
    memory.available = False
    try:
        r = await api.get("/api/v1/pools", headers=AUTH)
        assert r.status_code == 503 and "registry unavailable" in r.json()["detail"]
        assert (await api.get("/readyz")).status_code == 503
    finally:
        memory.available = True
    assert (await api.get("/readyz")).status_code == 200
