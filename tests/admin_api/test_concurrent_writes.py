"""Admin writes that race: pool updates are compare-and-sets (409 with the
current version instead of a lost update), and a static registration's
conflict check is part of its write."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from lookaside_registry.store import RegistryStore
from tests.admin_api.conftest import AUTH

pytestmark = pytest.mark.asyncio(loop_scope="session")

ROUNDS = 30


async def test_concurrent_patches_never_lose_an_accepted_change(
    client: httpx.AsyncClient, store: RegistryStore, pool: str
) -> None:
    """Two operators change different settings at once: every change that got
    200 is in the result; the other gets 409 with the current version."""
    url = f"/api/v1/pools/{pool}"
    lost = []
    for i in range(ROUNDS):
        a, b = await asyncio.gather(
            client.patch(url, json={"lease_ttl_ms": 20_000 + i}, headers=AUTH),
            client.patch(url, json={"report_interval_ms": 5_000 + i}, headers=AUTH),
        )
        config = await store.get_pool(pool)
        assert config is not None
        for r in (a, b):
            assert r.status_code in (200, 409), r.text
            if r.status_code == 409:
                assert r.json()["current_version"] >= 1
                assert "changed concurrently" in r.json()["detail"]
        if a.status_code == 200 and config.lease_ttl_ms != 20_000 + i:
            lost.append(("lease_ttl_ms", i))
        if b.status_code == 200 and config.report_interval_ms != 5_000 + i:
            lost.append(("report_interval_ms", i))
    assert lost == [], f"accepted changes lost: {lost}"


async def test_patch_with_a_stale_if_match_is_a_conflict(
    client: httpx.AsyncClient, pool: str
) -> None:
    url = f"/api/v1/pools/{pool}"
    version = (await client.get(url, headers=AUTH)).json()["config_version"]
    r = await client.patch(url, json={"fallback": True}, headers={**AUTH, "If-Match": str(version)})
    assert r.status_code == 200, r.text
    assert r.json()["config_version"] == version + 1
    r = await client.patch(
        url, json={"fallback": False}, headers={**AUTH, "If-Match": f'"{version}"'}
    )
    assert r.status_code == 409
    assert r.json()["current_version"] == version + 1
    assert (await client.get(url, headers=AUTH)).json()["fallback"] is True


async def test_the_same_static_backend_posted_at_once_is_registered_once(
    client: httpx.AsyncClient, pool: str
) -> None:
    url = f"/api/v1/pools/{pool}/backends"
    for port in range(9901, 9901 + ROUNDS):
        body = {"host": "127.0.0.1", "port": port}
        replies = await asyncio.gather(
            *(client.post(url, json=body, headers=AUTH) for _ in range(3))
        )
        codes = sorted(r.status_code for r in replies)
        assert codes == [201, 409, 409], (port, [r.text for r in replies])
    backends = (await client.get(url, headers=AUTH)).json()["backends"]
    assert len(backends) == ROUNDS
