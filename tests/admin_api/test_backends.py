"""/api/v1/pools/{pool}/backends against the real test Redis."""

from __future__ import annotations

import httpx
import pytest

from lookaside_registry.machine import Event
from lookaside_registry.store import RegistryStore
from tests.admin_api.conftest import AUTH

pytestmark = pytest.mark.asyncio


async def test_register_static_list_and_get(
    client: httpx.AsyncClient, pool: str, store: RegistryStore
) -> None:
    body = {
        "host": "127.0.0.1",
        "port": 9001,
        "weight": 5,
        "zone": "eu-1",
        "metadata": {"ver": "1.2"},
    }
    r = await client.post(f"/api/v1/pools/{pool}/backends", json=body, headers=AUTH)
    assert r.status_code == 201, r.text
    b = r.json()
    assert b["address"] == "127.0.0.1:9001"
    assert (b["weight"], b["zone"], b["metadata"], b["state"]) == (
        5,
        "eu-1",
        {"ver": "1.2"},
        "serving",
    )
    assert b["static"] is True
    assert b["lease_expires_ms"] == 0
    assert b["last_heard_ms"] > 0
    assert r.headers["location"].endswith(f"/backends/{b['id']}")

    r = await client.get(f"/api/v1/pools/{pool}/backends", headers=AUTH)
    assert r.status_code == 200
    assert [x["id"] for x in r.json()["backends"]] == [b["id"]]

    r = await client.get(f"/api/v1/pools/{pool}/backends/{b['id']}", headers=AUTH)
    assert r.status_code == 200
    assert r.json() == b

    snap = await store.snapshot(pool)
    assert snap is not None
    assert [(x.ip, x.port, x.weight, x.static) for x in snap.backends] == [
        ("127.0.0.1", 9001, 5, True)
    ]


async def test_register_resolves_host_names(client: httpx.AsyncClient, pool: str) -> None:
    r = await client.post(
        f"/api/v1/pools/{pool}/backends", json={"host": "localhost", "port": 9002}, headers=AUTH
    )
    assert r.status_code == 201, r.text
    assert r.json()["host"] == "localhost"
    assert r.json()["ip"] in ("127.0.0.1", "::1")


async def test_register_twice_is_409(client: httpx.AsyncClient, pool: str, static_backend) -> None:  # type: ignore[no-untyped-def]
    await static_backend(pool, 9003)
    r = await client.post(
        f"/api/v1/pools/{pool}/backends", json={"host": "127.0.0.1", "port": 9003}, headers=AUTH
    )
    assert r.status_code == 409
    assert "already registered" in r.json()["detail"]


@pytest.mark.parametrize(
    ("body", "needle"),
    [
        ({"host": "0.0.0.0", "port": 1}, "wildcard"),
        ({"host": "not a host!", "port": 1}, "neither an IP address nor a valid host name"),
        ({"host": "no-such-host.invalid", "port": 1}, "does not resolve"),
        ({"host": "127.0.0.1", "port": 0}, "port"),
        ({"host": "127.0.0.1", "port": 70000}, "port"),
        ({"host": "127.0.0.1", "port": 1, "weight": 0}, "weight"),
        ({"host": "127.0.0.1", "port": 1, "weight": 10**40}, "weight"),
        ({"host": "127.0.0.1", "port": 1, "zone": "a b"}, "zone"),
        ({"host": "127.0.0.1", "port": 1, "metadata": {"bad key": "x"}}, "metadata"),
        ({"host": "127.0.0.1", "port": 1, "metadata": {"k": "v" * 300}}, "metadata"),
        ({"host": "127.0.0.1", "port": "80"}, "port"),
        ({"host": 127, "port": 80}, "host"),
        ({"port": 80}, "host"),
    ],
)
async def test_register_invalid_is_422(
    client: httpx.AsyncClient, pool: str, body: dict[str, object], needle: str
) -> None:
    r = await client.post(f"/api/v1/pools/{pool}/backends", json=body, headers=AUTH)
    assert r.status_code == 422, r.text
    assert needle in r.json()["detail"]


async def test_unknown_pool_and_backend_are_404(
    client: httpx.AsyncClient, pool: str, pool_name: str
) -> None:
    other = pool_name + "-missing"
    r = await client.get(f"/api/v1/pools/{other}/backends", headers=AUTH)
    assert r.status_code == 404
    r = await client.post(
        f"/api/v1/pools/{other}/backends", json={"host": "127.0.0.1", "port": 1}, headers=AUTH
    )
    assert r.status_code == 404
    for method, suffix, kwargs in (
        ("GET", "", {}),
        ("DELETE", "", {}),
        ("PUT", "/weight", {"json": {"weight": 2}}),
        ("POST", "/drain", {}),
        ("POST", "/undrain", {}),
        ("POST", "/disable", {}),
        ("POST", "/enable", {}),
    ):
        r = await client.request(
            method, f"/api/v1/pools/{pool}/backends/abcdef123456{suffix}", headers=AUTH, **kwargs
        )
        assert r.status_code == 404, (method, suffix, r.text)
        assert "abcdef123456" in r.json()["detail"]


async def test_set_weight(
    client: httpx.AsyncClient, pool: str, static_backend, store: RegistryStore
) -> None:  # type: ignore[no-untyped-def]
    b = await static_backend(pool, 9004)
    url = f"/api/v1/pools/{pool}/backends/{b['id']}/weight"
    r = await client.put(url, json={"weight": 7}, headers=AUTH)
    assert r.status_code == 200, r.text
    assert r.json()["weight"] == 7
    snap = await store.snapshot(pool)
    assert snap is not None and snap.backends[0].weight == 7
    for bad in ({"weight": 0}, {"weight": 1001}, {"weight": 2.5}, {"weight": "3"}, {}):
        r = await client.put(url, json=bad, headers=AUTH)
        assert r.status_code == 422, bad
        assert "weight" in r.json()["detail"]


async def test_state_transitions(
    client: httpx.AsyncClient, pool: str, static_backend, store: RegistryStore
) -> None:  # type: ignore[no-untyped-def]
    b = await static_backend(pool, 9005)
    base = f"/api/v1/pools/{pool}/backends/{b['id']}"

    async def act(action: str, expect: int, state: str | None = None) -> None:
        r = await client.post(f"{base}/{action}", headers=AUTH)
        assert r.status_code == expect, (action, r.text)
        if state is not None:
            assert r.json()["state"] == state
        if expect == 409:
            assert "cannot move it" in r.json()["detail"]

    await act("drain", 200, "draining")
    await act("drain", 200, "draining")  # idempotent
    await act("enable", 409)  # only a disabled backend can be enabled
    await act("undrain", 200, "serving")
    await act("undrain", 200, "serving")
    await act("disable", 200, "disabled")
    await act("drain", 409)
    await act("undrain", 409)
    await act("enable", 200, "serving")

    # unhealthy is set by health checking: an operator may disable it, not undrain it
    await store.step(pool, b["id"], Event.HEALTH_FAIL, actor="health", max_share=1.0)
    await act("undrain", 409)
    await act("drain", 409)
    await act("disable", 200, "disabled")

    # ejected is set by outlier detection: an operator may reinstate or disable it
    await act("reinstate", 409)  # only an ejected backend can be reinstated
    await act("enable", 200, "serving")
    await store.step(pool, b["id"], Event.EJECT, actor="outlier", max_share=1.0)
    await store.update_backend(pool, b["id"], health_detail="9 of 10 lost")
    r = await client.get(base, headers=AUTH)
    assert (r.json()["state"], r.json()["detail"]) == ("ejected", "9 of 10 lost")
    await act("undrain", 409)
    await act("reinstate", 200, "serving")
    await store.step(pool, b["id"], Event.EJECT, actor="outlier", max_share=1.0)
    await act("disable", 200, "disabled")


async def test_transition_bumps_version_once(
    client: httpx.AsyncClient, pool: str, static_backend, store: RegistryStore
) -> None:  # type: ignore[no-untyped-def]
    b = await static_backend(pool, 9006)
    v0 = (await store.versions([pool]))[pool]
    await client.post(f"/api/v1/pools/{pool}/backends/{b['id']}/drain", headers=AUTH)
    v1 = (await store.versions([pool]))[pool]
    await client.post(f"/api/v1/pools/{pool}/backends/{b['id']}/drain", headers=AUTH)
    v2 = (await store.versions([pool]))[pool]
    assert v1 == v0 + 1
    assert v2 == v1  # asking for the state it is in changes nothing


async def test_remove(
    client: httpx.AsyncClient, pool: str, static_backend, store: RegistryStore
) -> None:  # type: ignore[no-untyped-def]
    b = await static_backend(pool, 9007)
    r = await client.delete(f"/api/v1/pools/{pool}/backends/{b['id']}", headers=AUTH)
    assert r.status_code == 204
    snap = await store.snapshot(pool)
    assert snap is not None and snap.backends == ()
    r = await client.delete(f"/api/v1/pools/{pool}/backends/{b['id']}", headers=AUTH)
    assert r.status_code == 404


async def test_leased_backend_is_listed_with_lease(
    client: httpx.AsyncClient, pool: str, store: RegistryStore
) -> None:
    lease = await store.register(pool=pool, host="127.0.0.1", ip="127.0.0.1", port=9008, weight=2)
    await store.heartbeat(pool, lease.backend_id, lease.lease_id, {"qps": 12.5, "in_flight": 3})
    r = await client.get(f"/api/v1/pools/{pool}/backends/{lease.backend_id}", headers=AUTH)
    assert r.status_code == 200
    b = r.json()
    assert b["static"] is False
    assert b["lease_expires_ms"] > b["last_heard_ms"] > 0
    assert b["load"] == {"qps": 12.5, "in_flight": 3.0}


async def test_absurd_backend_ids_are_422(client: httpx.AsyncClient, pool: str) -> None:
    for backend_id in ("x" * 65, "a%20b", "%F0%9F%98%80"):
        r = await client.post(f"/api/v1/pools/{pool}/backends/{backend_id}/drain", headers=AUTH)
        assert r.status_code == 422, (backend_id, r.text)
