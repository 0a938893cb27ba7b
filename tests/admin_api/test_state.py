"""/api/v1/state: export and idempotent apply of the operator state."""

from __future__ import annotations

import httpx
import pytest

from tests.admin_api.conftest import AUTH

pytestmark = pytest.mark.asyncio


def body(pool: str) -> dict[str, object]:
    return {
        "pools": [
            {
                "name": pool,
                "config": {"policy": "least_loaded", "lease_ttl_ms": 4000},
                "static_backends": [{"host": "127.0.0.1", "port": 7101, "weight": 2}],
                "holds": [{"address": "127.0.0.1:7102"}],
            }
        ]
    }


async def test_apply_then_export(client: httpx.AsyncClient, pool_name: str) -> None:
    r = await client.post("/api/v1/state", json=body(pool_name), headers=AUTH)
    assert r.status_code == 200, r.text
    out = r.json()
    assert f"pool {pool_name}: settings" in out["changes"]
    assert out["pending_holds"] == [{"pool": pool_name, "address": "127.0.0.1:7102"}]

    again = await client.post("/api/v1/state", json=body(pool_name), headers=AUTH)
    assert again.status_code == 200 and again.json()["changes"] == []

    r = await client.get("/api/v1/state", headers=AUTH)
    assert r.status_code == 200
    pools = {p["name"]: p for p in r.json()["pools"]}
    mine = pools[pool_name]
    assert mine["config"]["policy"] == "least_loaded" and mine["config"]["lease_ttl_ms"] == 4000
    assert [(b["host"], b["port"], b["weight"]) for b in mine["static_backends"]] == [
        ("127.0.0.1", 7101, 2)
    ]
    pool = await client.get(f"/api/v1/pools/{pool_name}", headers=AUTH)
    assert pool.json()["backends"]["total"] == 1


async def test_state_needs_the_token_and_a_valid_document(
    client: httpx.AsyncClient, pool_name: str
) -> None:
    assert (await client.get("/api/v1/state")).status_code == 401
    assert (await client.post("/api/v1/state", json=body(pool_name))).status_code == 401
    bad = {"pools": [{"name": pool_name, "config": {"policy": "fastest"}}]}
    r = await client.post("/api/v1/state", json=bad, headers=AUTH)
    assert r.status_code == 422
    assert "policy" in r.text
