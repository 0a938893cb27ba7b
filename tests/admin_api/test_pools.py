"""/api/v1/pools against the real test Redis."""

from __future__ import annotations

import dataclasses
from typing import Any

import httpx
import pytest

from lookaside_registry.model import PoolConfig, RegistrationRules
from lookaside_registry.store import RegistryStore
from tests.admin_api.conftest import AUTH

pytestmark = pytest.mark.asyncio


async def test_create_read_and_list(client: httpx.AsyncClient, pool_name: str) -> None:
    body = {
        "name": pool_name,
        "report_interval_ms": 2000,
        "lease_ttl_ms": 5000,
        "drops": [{"token": "overload", "per_mille": 100}],
        "fallback": False,
    }
    r = await client.post("/api/v1/pools", json=body, headers=AUTH)
    assert r.status_code == 201, r.text
    created = r.json()
    assert r.headers["location"] == f"/api/v1/pools/{pool_name}"
    assert created["name"] == pool_name
    assert created["policy"] == "round_robin"
    assert created["report_interval_ms"] == 2000
    assert created["drops"] == [{"token": "overload", "per_mille": 100}]
    assert created["backends"]["total"] == 0
    assert created["version"] >= 1

    r = await client.get(f"/api/v1/pools/{pool_name}", headers=AUTH)
    assert r.status_code == 200
    assert r.json() == created

    r = await client.get("/api/v1/pools", headers=AUTH)
    assert r.status_code == 200
    assert pool_name in [p["name"] for p in r.json()["pools"]]


async def test_create_existing_is_409(client: httpx.AsyncClient, pool: str) -> None:
    r = await client.post("/api/v1/pools", json={"name": pool, "fallback": True}, headers=AUTH)
    assert r.status_code == 409
    assert "already exists" in r.json()["detail"]
    # The existing settings are untouched.
    assert (await client.get(f"/api/v1/pools/{pool}", headers=AUTH)).json()["fallback"] is False


async def test_put_replaces_and_patch_changes_some(
    client: httpx.AsyncClient, pool: str, store: RegistryStore
) -> None:
    before = (await client.get(f"/api/v1/pools/{pool}", headers=AUTH)).json()
    r = await client.put(
        f"/api/v1/pools/{pool}",
        json={"report_interval_ms": 500, "drops": [{"token": "lb", "per_mille": 5}]},
        headers=AUTH,
    )
    assert r.status_code == 200, r.text
    assert r.json()["report_interval_ms"] == 500
    assert r.json()["lease_ttl_ms"] == 10_000
    assert r.json()["version"] > before["version"]

    r = await client.patch(f"/api/v1/pools/{pool}", json={"fallback": True}, headers=AUTH)
    assert r.status_code == 200, r.text
    data = r.json()
    assert data["fallback"] is True
    assert data["report_interval_ms"] == 500  # kept
    assert data["drops"] == [{"token": "lb", "per_mille": 5}]

    # What the balancers read from Redis is what the API said.
    config = await store.get_pool(pool)
    assert config is not None
    assert config.fallback is True
    assert [(d.token, d.per_mille) for d in config.drops] == [("lb", 5)]


async def test_unknown_pool_is_404(client: httpx.AsyncClient, pool_name: str) -> None:
    for method, kwargs in (
        ("GET", {}),
        ("PUT", {"json": {}}),
        ("PATCH", {"json": {"fallback": True}}),
        ("DELETE", {}),
    ):
        r = await client.request(method, f"/api/v1/pools/{pool_name}", headers=AUTH, **kwargs)
        assert r.status_code == 404, (method, r.text)
        assert pool_name in r.json()["detail"]


@pytest.mark.parametrize(
    ("body", "needle"),
    [
        ({"policy": "least_request"}, "policy"),
        ({"report_interval_ms": -1}, "report_interval_ms"),
        ({"report_interval_ms": 10**30}, "report_interval_ms"),
        ({"lease_ttl_ms": 10}, "lease_ttl_ms"),
        ({"lease_ttl_ms": "1000"}, "lease_ttl_ms"),
        ({"fallback": "yes"}, "fallback"),
        ({"drops": [{"token": "Bad Token", "per_mille": 1}]}, "drop token 'Bad Token' is invalid"),
        (
            {"drops": [{"token": "a", "per_mille": 600}, {"token": "b", "per_mille": 500}]},
            "1100 per mille",
        ),
        (
            {"drops": [{"token": "a", "per_mille": 1}, {"token": "a", "per_mille": 1}]},
            "more than once",
        ),
        ({"drops": [{"token": "a", "per_mille": 1001}]}, "per_mille"),
        ({"drops": "none"}, "drops"),
        ({"unknown": 1}, "unknown"),
        ({"outlier_detection": {"failure_percent": 101}}, "outlier_detection.failure_percent"),
        ({"outlier_detection": {"min_hosts": 0}}, "outlier_detection.min_hosts"),
        ({"outlier_detection": {"interval_ms": 1.5}}, "outlier_detection.interval_ms"),
        ({"outlier_detection": {"unknown": 1}}, "outlier_detection.unknown"),
        ({"health_checks": {"service": "no spaces"}}, "health_checks.service"),
        ({"health_checks": {"timeout_ms": 10}}, "health_checks.timeout_ms"),
        ({"health_checks": "off"}, "health_checks"),
        ({"subset_size": 1001}, "subset_size: Input should be less than or equal to 1000"),
        ({"subset_size": -1}, "subset_size: Input should be greater than or equal to 0"),
        ({"subset_size": 2.5}, "subset_size"),
    ],
)
async def test_invalid_settings_are_422(
    client: httpx.AsyncClient, pool_name: str, body: dict[str, object], needle: str
) -> None:
    r = await client.post("/api/v1/pools", json={"name": pool_name, **body}, headers=AUTH)
    assert r.status_code == 422, r.text
    assert needle in r.json()["detail"]
    assert r.json()["errors"]
    assert (await client.get(f"/api/v1/pools/{pool_name}", headers=AUTH)).status_code == 404


@pytest.mark.parametrize("name", ["", "-starts-with-dash", "has space", "x" * 129, "ünïcode"])
async def test_invalid_pool_name_is_422(client: httpx.AsyncClient, name: str) -> None:
    r = await client.post("/api/v1/pools", json={"name": name}, headers=AUTH)
    assert r.status_code == 422
    assert "name" in r.json()["detail"]


async def test_bad_json_is_422(client: httpx.AsyncClient) -> None:
    r = await client.post(
        "/api/v1/pools", content=b"{not json", headers={**AUTH, "Content-Type": "application/json"}
    )
    assert r.status_code == 422
    r = await client.post("/api/v1/pools", json=[1, 2], headers=AUTH)
    assert r.status_code == 422


async def test_patch_that_changes_nothing_writes_nothing(
    client: httpx.AsyncClient, pool: str, store: RegistryStore
) -> None:
    before = (await store.versions([pool]))[pool]
    for body in ({}, {"fallback": None}, {"fallback": False}):
        r = await client.patch(f"/api/v1/pools/{pool}", json=body, headers=AUTH)
        assert r.status_code == 200
        assert r.json()["version"] == before
    assert (await store.versions([pool]))[pool] == before


async def test_absurd_path_is_422_not_500(client: httpx.AsyncClient) -> None:
    for path in ("/api/v1/pools/" + "a" * 5000, "/api/v1/pools/%00", "/api/v1/pools/-x"):
        r = await client.get(path, headers=AUTH)
        assert r.status_code == 422, (path, r.status_code)


async def test_delete_refuses_live_backends_unless_forced(
    client: httpx.AsyncClient,
    pool: str,
    static_backend,
    store: RegistryStore,  # type: ignore[no-untyped-def]
) -> None:
    await static_backend(pool, 7001)
    r = await client.delete(f"/api/v1/pools/{pool}", headers=AUTH)
    assert r.status_code == 409
    assert "1 live backend" in r.json()["detail"]
    assert await store.get_pool(pool) is not None

    r = await client.delete(f"/api/v1/pools/{pool}", params={"force": "true"}, headers=AUTH)
    assert r.status_code == 204
    assert await store.get_pool(pool) is None
    assert pool not in await store.list_pools()
    assert (await client.get(f"/api/v1/pools/{pool}", headers=AUTH)).status_code == 404


async def test_delete_empty_pool(
    client: httpx.AsyncClient, pool: str, store: RegistryStore
) -> None:
    r = await client.delete(f"/api/v1/pools/{pool}", headers=AUTH)
    assert r.status_code == 204
    assert await store.get_pool(pool) is None


async def test_pool_made_by_registry_is_listed(
    client: httpx.AsyncClient, store: RegistryStore, pool_name: str
) -> None:
    await store.put_pool(PoolConfig(name=pool_name, fallback=True))
    r = await client.get(f"/api/v1/pools/{pool_name}", headers=AUTH)
    assert r.status_code == 200
    assert r.json()["fallback"] is True


def _with_every_field_changed(config: Any) -> Any:
    """Non-default values for every plain field of a PoolConfig, and of its
    nested settings, so a test can see each one make its way through the API."""
    changes: dict[str, object] = {}
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        if f.name in ("name", "policy", "drops", "address_policy", "networks"):
            continue
        if dataclasses.is_dataclass(value):
            changes[f.name] = _with_every_field_changed(value)
        elif isinstance(value, bool):
            changes[f.name] = not value
        elif isinstance(value, int):
            changes[f.name] = value + 1
        elif isinstance(value, str):
            changes[f.name] = value + "x"
    if isinstance(config, PoolConfig):
        changes["policy"] = "least_loaded"
    if isinstance(config, RegistrationRules):
        changes.update(address_policy="cidr", networks=("10.0.0.0/8", "fd00::/8"))
    return dataclasses.replace(config, **changes)


async def test_every_pool_setting_round_trips_and_patch_keeps_the_rest(
    client: httpx.AsyncClient, store: RegistryStore, pool_name: str
) -> None:
    config = _with_every_field_changed(PoolConfig(name=pool_name))
    await store.put_pool(config)
    r = await client.get(f"/api/v1/pools/{pool_name}", headers=AUTH)
    body = {
        k: v
        for k, v in r.json().items()
        if k not in ("name", "version", "config_version", "backends")
    }
    # What GET shows, PUT back, is the same config: the API covers every field.
    r = await client.put(f"/api/v1/pools/{pool_name}", json=body, headers=AUTH)
    assert r.status_code == 200, r.text
    assert await store.get_pool(pool_name) == config
    r = await client.patch(f"/api/v1/pools/{pool_name}", json={"fallback": False}, headers=AUTH)
    assert r.status_code == 200
    assert await store.get_pool(pool_name) == dataclasses.replace(config, fallback=False)


async def test_unknown_query_parameter_is_refused(client, pool: str) -> None:  # type: ignore[no-untyped-def]
    from tests.admin_api.conftest import AUTH

    r = await client.delete(f"/api/v1/pools/{pool}?forced=true", headers=AUTH)
    assert r.status_code == 422
    assert "forced" in r.text and "force" in r.json()["detail"]
    r = await client.get(f"/api/v1/pools/{pool}", headers=AUTH)
    assert r.status_code == 200  # nothing was deleted


async def test_repeated_query_parameter_is_refused(client, pool: str) -> None:  # type: ignore[no-untyped-def]
    from tests.admin_api.conftest import AUTH

    r = await client.get(f"/api/v1/pools/{pool}/events?limit=5&limit=7", headers=AUTH)
    assert r.status_code == 422
    assert "given 2 times" in r.json()["detail"]


async def test_health_and_outlier_settings_reach_the_pool_config(
    client: httpx.AsyncClient, pool: str, store: RegistryStore
) -> None:
    r = await client.put(
        f"/api/v1/pools/{pool}",
        json={
            "health_checks": {"service": "routeguide.RouteGuide", "interval_ms": 500},
            "outlier_detection": {"failure_percent": 30, "base_ejection_ms": 5000},
        },
        headers=AUTH,
    )
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["health_checks"]["service"] == "routeguide.RouteGuide"
    assert out["health_checks"]["timeout_ms"] == 1000  # omitted: the default
    assert out["outlier_detection"]["failure_percent"] == 30
    config = await store.get_pool(pool)
    assert config is not None
    assert (config.health_checks.service, config.health_checks.interval_ms) == (
        "routeguide.RouteGuide",
        500,
    )
    assert (
        config.outlier_detection.failure_percent,
        config.outlier_detection.base_ejection_ms,
    ) == (
        30,
        5000,
    )
    # PATCH merges into the nested settings: the rest stay as they were.
    r = await client.patch(
        f"/api/v1/pools/{pool}",
        json={"outlier_detection": {"enabled": False, "failure_percent": None}},
        headers=AUTH,
    )
    assert r.status_code == 200, r.text
    config = await store.get_pool(pool)
    assert config is not None
    assert config.outlier_detection.enabled is False
    assert (
        config.outlier_detection.failure_percent,
        config.outlier_detection.base_ejection_ms,
    ) == (
        30,
        5000,
    )
    assert config.health_checks.service == "routeguide.RouteGuide"
    # An empty nested patch changes nothing.
    before = (await store.versions([pool]))[pool]
    r = await client.patch(f"/api/v1/pools/{pool}", json={"health_checks": {}}, headers=AUTH)
    assert r.json()["version"] == before
