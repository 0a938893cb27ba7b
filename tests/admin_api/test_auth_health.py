"""Auth (401, public reads), Redis outages (503), health and metrics."""

from __future__ import annotations

import httpx
import pytest

from lookaside.redis_process import free_port
from tests.admin_api.conftest import AUTH, TOKEN

pytestmark = pytest.mark.asyncio


async def test_every_api_call_needs_the_token(client: httpx.AsyncClient, pool: str) -> None:
    calls = [
        ("GET", "/api/v1/pools", None),
        ("POST", "/api/v1/pools", {"name": pool + "x"}),
        ("GET", f"/api/v1/pools/{pool}", None),
        ("PATCH", f"/api/v1/pools/{pool}", {"fallback": True}),
        ("DELETE", f"/api/v1/pools/{pool}", None),
        ("GET", f"/api/v1/pools/{pool}/backends", None),
        ("POST", f"/api/v1/pools/{pool}/backends/abc/drain", None),
        ("GET", f"/api/v1/pools/{pool}/load", None),
        ("GET", f"/api/v1/pools/{pool}/events", None),
    ]
    for headers in (
        {},
        {"Authorization": "Bearer wrong"},
        {"Authorization": f"Basic {TOKEN}"},
        {"Authorization": f"Bearer {TOKEN}x"},
    ):
        for method, path, body in calls:
            r = await client.request(method, path, json=body, headers=headers)
            assert r.status_code == 401, (method, path, headers, r.text)
            assert r.headers["www-authenticate"] == "Bearer"
            assert "token" in r.json()["detail"]
    # Nothing was written.
    assert (await client.get(f"/api/v1/pools/{pool}", headers=AUTH)).json()["fallback"] is False


async def test_public_reads(app_client, redis_url: str, pool: str) -> None:  # type: ignore[no-untyped-def]
    public = await app_client(redis_url, public_reads=True)
    assert (await public.get(f"/api/v1/pools/{pool}")).status_code == 200
    assert (await public.get(f"/api/v1/pools/{pool}/events")).status_code == 200
    r = await public.patch(f"/api/v1/pools/{pool}", json={"fallback": True})
    assert r.status_code == 401
    r = await public.patch(f"/api/v1/pools/{pool}", json={"fallback": True}, headers=AUTH)
    assert r.status_code == 200


async def test_redis_down_is_503(app_client) -> None:  # type: ignore[no-untyped-def]
    down = await app_client(f"redis://127.0.0.1:{free_port()}/0")
    for method, path, body in (
        ("GET", "/api/v1/pools", None),
        ("POST", "/api/v1/pools", {"name": "p1"}),
        ("GET", "/api/v1/pools/p1/load", None),
        ("POST", "/api/v1/pools/p1/backends/abc/drain", None),
    ):
        r = await down.request(method, path, json=body, headers=AUTH)
        assert r.status_code == 503, (method, path, r.text)
        assert "registry unavailable" in r.json()["detail"]
    assert (await down.get("/healthz")).status_code == 200
    r = await down.get("/readyz")
    assert r.status_code == 503
    assert r.json()["status"] == "unavailable"


async def test_health_and_ready(client: httpx.AsyncClient) -> None:
    assert (await client.get("/healthz")).json() == {"status": "ok", "detail": ""}
    r = await client.get("/readyz")
    assert r.status_code == 200
    assert r.json()["status"] == "ok"


async def test_metrics_count_requests_by_route(client: httpx.AsyncClient, pool: str) -> None:
    await client.get(f"/api/v1/pools/{pool}", headers=AUTH)
    await client.get("/api/v1/pools/nope-" + pool, headers=AUTH)
    await client.get("/no/such/path")
    assert (await client.get("/metrics")).status_code == 401
    r = await client.get("/metrics", headers=AUTH)
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/plain")
    text = r.text
    assert (
        'lookaside_admin_requests_total{method="GET",route="/api/v1/pools/{pool}",status="200"}'
        in text
    )
    assert (
        'lookaside_admin_requests_total{method="GET",route="/api/v1/pools/{pool}",status="404"}'
        in text
    )
    assert 'route="unmatched",status="404"' in text
    assert "lookaside_admin_request_seconds_bucket" in text
    assert 'lookaside_admin_actions_total{kind="pool_created"}' in text


async def test_dashboard_is_served(client: httpx.AsyncClient) -> None:
    r = await client.get("/")
    assert r.status_code == 200
    assert "text/html" in r.headers["content-type"]
    assert "default-src 'self'" in r.headers["content-security-policy"]
    assert '<script src="/static/app.js"' in r.text
    for asset, kind in (("/static/app.js", "javascript"), ("/static/style.css", "text/css")):
        r = await client.get(asset)
        assert r.status_code == 200, asset
        assert kind in r.headers["content-type"]
