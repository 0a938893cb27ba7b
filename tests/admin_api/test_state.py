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
    assert f"pool {pool_name}: lease_ttl_ms: 10000 -> 4000" in out["changes"]
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


async def test_apply_merges_and_dry_run_writes_nothing(
    client: httpx.AsyncClient, pool_name: str
) -> None:
    await client.post("/api/v1/state", json=body(pool_name), headers=AUTH)
    partial = {"pools": [{"name": pool_name, "config": {"report_interval_ms": 2000}}]}
    r = await client.post("/api/v1/state?dry_run=true", json=partial, headers=AUTH)
    assert r.status_code == 200, r.text
    assert r.json()["changes"] == [f"pool {pool_name}: report_interval_ms: 10000 -> 2000"]
    pool = (await client.get(f"/api/v1/pools/{pool_name}", headers=AUTH)).json()
    assert pool["report_interval_ms"] == 10000  # the dry run wrote nothing
    r = await client.post("/api/v1/state", json=partial, headers=AUTH)
    assert r.json()["changes"] == [f"pool {pool_name}: report_interval_ms: 10000 -> 2000"]
    pool = (await client.get(f"/api/v1/pools/{pool_name}", headers=AUTH)).json()
    assert (pool["policy"], pool["lease_ttl_ms"]) == ("least_loaded", 4000)  # not named: kept
    assert pool["backends"]["total"] == 1  # the static backend stays without prune
    r = await client.post("/api/v1/state?prune=true", json=partial, headers=AUTH)
    changes = r.json()["changes"]
    assert f"pool {pool_name}: policy: least_loaded -> round_robin" in changes
    assert f"pool {pool_name}: static backend 127.0.0.1:7101: removed (pruned)" in changes
    pool = (await client.get(f"/api/v1/pools/{pool_name}", headers=AUTH)).json()
    assert (pool["policy"], pool["report_interval_ms"]) == ("round_robin", 2000)
    assert pool["backends"]["total"] == 0
