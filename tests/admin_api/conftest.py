"""Fixtures for the admin API: the app against the test Redis, an httpx
client on it, and helpers to make pools and backends."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import httpx
import pytest
import pytest_asyncio
from fastapi import FastAPI

from admin_api.app import create_app
from admin_api.settings import AdminSettings
from lookaside_registry.store import RegistryStore

TOKEN = "test-admin-token-0123456789abcdef"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def make_settings(redis_url: str, **overrides: Any) -> AdminSettings:
    values: dict[str, Any] = dict(token=TOKEN, redis_url=redis_url, listen="127.0.0.1:0", dev=False)
    values.update(overrides)
    return AdminSettings(**values)


async def _client(app: FastAPI) -> httpx.AsyncClient:
    transport = httpx.ASGITransport(app=app, client=("127.0.0.7", 40000))
    return httpx.AsyncClient(transport=transport, base_url="http://admin.test")


@pytest_asyncio.fixture
async def app(redis_url: str) -> AsyncIterator[FastAPI]:
    application = create_app(make_settings(redis_url))
    yield application
    await application.state.store.close()


@pytest_asyncio.fixture
async def client(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    async with await _client(app) as c:
        yield c


@pytest_asyncio.fixture
async def app_client() -> AsyncIterator[Callable[..., Awaitable[httpx.AsyncClient]]]:
    """Makes a client for an app with other settings (closed at the end)."""
    made: list[tuple[FastAPI, httpx.AsyncClient]] = []

    async def make(redis_url: str, **overrides: Any) -> httpx.AsyncClient:
        application = create_app(make_settings(redis_url, **overrides))
        c = await _client(application)
        made.append((application, c))
        return c

    yield make
    for application, c in made:
        await c.aclose()
        await application.state.store.close()


@pytest_asyncio.fixture
async def store(redis_url: str) -> AsyncIterator[RegistryStore]:
    s = RegistryStore.from_url(redis_url)
    yield s
    await s.close()


@pytest_asyncio.fixture
async def pool(client: httpx.AsyncClient, pool_name: str) -> str:
    """A pool created through the API."""
    r = await client.post("/api/v1/pools", json={"name": pool_name}, headers=AUTH)
    assert r.status_code == 201, r.text
    return pool_name


@pytest.fixture
def static_backend(client: httpx.AsyncClient) -> Callable[..., Awaitable[dict[str, Any]]]:
    async def add(pool: str, port: int, **fields: Any) -> dict[str, Any]:
        body = {"host": "127.0.0.1", "port": port, **fields}
        r = await client.post(f"/api/v1/pools/{pool}/backends", json=body, headers=AUTH)
        assert r.status_code == 201, r.text
        data: dict[str, Any] = r.json()
        return data

    return add
