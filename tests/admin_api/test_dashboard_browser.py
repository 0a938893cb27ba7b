"""The dashboard in headless Chromium against a real `lookaside admin`
process: it lists pools and backends with live numbers, its Drain button
(after the token prompt) drains the backend in Redis, and it shows the
golden signals (calls/s, success rate, latency p50/p99) with a chart drawn
from stored history, the pool's events, and "—" for what is not known, at
1280 and at 420 px wide.

Screenshots go to artifacts/ at the repository root (CI keeps them).
Needs Debian's chromium at /usr/bin/chromium (Playwright's own browser
download is not used)."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import redis

from lookaside_registry import keys
from lookaside_registry.model import PoolConfig, backend_id_for
from lookaside_registry.store import RegistryStore
from tests.admin_api.conftest import TOKEN
from tests.admin_api.process import AdminProcess, clean_env
from tests.support import require_tool, wait_until

CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = Path(__file__).resolve().parents[2] / "artifacts"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
AUTH = {"Authorization": f"Bearer {TOKEN}"}
DASHBOARD_DB = 3


@pytest.fixture(autouse=True)
def _needs_chromium() -> None:
    require_tool(str(CHROMIUM), "Debian's chromium: apt-get install -y chromium; `make test` does")


@pytest.fixture
def dash_redis_url(redis_url: str) -> str:
    """A database of its own on the test Redis, so the page shows only this
    test's pool, not those every other test made."""
    url = redis_url.rsplit("/", 1)[0] + f"/{DASHBOARD_DB}"
    client = redis.Redis.from_url(url)
    client.flushdb()
    client.close()
    return url


@pytest.fixture
def dash_redis(dash_redis_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(dash_redis_url, decode_responses=True)
    yield client
    client.close()


@pytest.fixture
def admin(dash_redis_url: str) -> Iterator[AdminProcess]:
    process = AdminProcess(
        dash_redis_url, "--public-reads", env=clean_env(LOOKASIDE_ADMIN_TOKEN=TOKEN)
    ).wait_ready()
    yield process
    code, _out, err = process.stop()
    assert code == 0, err


async def _leased_backend(redis_url: str, pool: str, port: int, load: dict[str, float]) -> None:
    store = RegistryStore.from_url(redis_url)
    try:
        lease = await store.register(
            pool=pool,
            host="127.0.0.1",
            ip="127.0.0.1",
            port=port,
            weight=2,
            zone="eu-west-1b",
            lease_ttl_ms=600_000,
        )
        await store.heartbeat(pool, lease.backend_id, lease.lease_id, load)
    finally:
        await store.close()


def _seed(admin: AdminProcess, redis_url: str, pool: str, client: redis.Redis) -> dict[int, str]:
    """A pool with two static backends and one leased one, plus client
    reports and a stream count as a balancer would write them."""
    api = httpx.Client(base_url=admin.url, headers=AUTH)
    body = {"name": pool, "drops": [{"token": "overload", "per_mille": 20}]}
    assert api.post("/api/v1/pools", json=body).status_code == 201
    ids = {}
    for port, weight in ((9401, 1), (9402, 3)):
        r = api.post(
            f"/api/v1/pools/{pool}/backends",
            json={"host": "127.0.0.1", "port": port, "weight": weight, "zone": "eu-west-1a"},
        )
        assert r.status_code == 201, r.text
        ids[port] = r.json()["id"]
    api.close()
    asyncio.run(
        _leased_backend(redis_url, pool, 9403, {"qps": 41.5, "in_flight": 3, "utilization": 0.42})
    )
    now = time.time()
    for back in (0, 10, 20, 60, 300):
        bucket = keys.load_bucket(pool, int((now - back) // 10))
        client.hset(
            bucket,
            mapping={
                "started": 1200,
                "finished": 1190,
                "known_received": 1190,
                "reports": 12,
                "drop:overload": 24,
            },
        )
        client.expire(bucket, 960)
    client.hset(
        keys.streams(pool), "balancer-a", json.dumps({"streams": 7, "ts_ms": int(now * 1000)})
    )
    return ids


def _state(client: redis.Redis, pool: str, backend_id: str) -> str:
    raw = client.hget(keys.backends(pool), backend_id)
    return str(json.loads(raw)["state"]) if raw else ""


def test_dashboard_drains_a_backend(
    admin: AdminProcess,
    dash_redis_url: str,
    dash_redis: redis.Redis,
    pool_name: str,
    tmp_path: Path,
) -> None:
    from playwright.sync_api import sync_playwright

    redis_client = dash_redis
    ids = _seed(admin, dash_redis_url, pool_name, redis_client)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 760})
            errors: list[str] = []
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            page.goto(admin.url + "/")

            card = page.locator(f'section.pool[data-pool="{pool_name}"]')
            card.wait_for(timeout=15_000)
            rows = card.locator("tbody tr[data-backend]")
            rows.first.wait_for(timeout=15_000)
            assert rows.count() == 3
            addresses = sorted(rows.nth(i).get_attribute("data-address") or "" for i in range(3))
            assert addresses == ["127.0.0.1:9401", "127.0.0.1:9402", "127.0.0.1:9403"]
            target = card.locator('tr[data-address="127.0.0.1:9401"]')
            assert target.get_attribute("data-state") == "serving"
            assert target.locator("input.weight").input_value() == "1"
            # Live numbers: client calls/s from load reports, qps from the heartbeat.
            assert card.locator(".stat.main .big").inner_text() not in ("", "0")
            leased = card.locator('tr[data-address="127.0.0.1:9403"]')
            assert "41.5" in leased.inner_text()

            target.locator('button[data-action="drain"]').click()
            dialog = page.locator("#token-dialog")
            dialog.wait_for(state="visible", timeout=5_000)
            page.fill("#token-input", TOKEN)
            page.click("#token-save")

            wait_until(lambda: _state(redis_client, pool_name, ids[9401]) == "draining", timeout=10)
            page.wait_for_selector(
                f'section.pool[data-pool="{pool_name}"] tr[data-address="127.0.0.1:9401"][data-state="draining"]',
                timeout=10_000,
            )
            assert _state(redis_client, pool_name, ids[9402]) == "serving"
            # The token is kept for the tab: the next action needs no prompt.
            target.locator('button[data-action="undrain"]').click()
            wait_until(lambda: _state(redis_client, pool_name, ids[9401]) == "serving", timeout=10)
            target.locator('button[data-action="drain"]').click()
            wait_until(lambda: _state(redis_client, pool_name, ids[9401]) == "draining", timeout=10)
            page.wait_for_selector(
                f'section.pool[data-pool="{pool_name}"] tr[data-address="127.0.0.1:9401"][data-state="draining"]',
                timeout=10_000,
            )
            # An ejection by outlier detection shows with its verdict, and
            # Reinstate ends it.
            raw = json.loads(redis_client.hget(keys.backends(pool_name), ids[9402]))
            raw.update(
                state="ejected",
                health_detail="14 of 14 calls lost (0 failed to send), over 50%",
                ejected_until_ms=int(time.time() * 1000) + 60_000,
                ejections=1,
            )
            redis_client.hset(keys.backends(pool_name), ids[9402], json.dumps(raw))
            ejected = card.locator('tr[data-address="127.0.0.1:9402"][data-state="ejected"]')
            ejected.wait_for(timeout=10_000)
            assert "14 of 14 calls lost" in (ejected.locator(".badge").get_attribute("title") or "")
            assert "1 ejected" in card.locator(".chips").inner_text()
            ejected.locator('button[data-action="reinstate"]').click()
            wait_until(lambda: _state(redis_client, pool_name, ids[9402]) == "serving", timeout=10)
            card.locator('tr[data-address="127.0.0.1:9402"][data-state="serving"]').wait_for(
                timeout=10_000
            )
            raw["state"] = "ejected"
            redis_client.hset(keys.backends(pool_name), ids[9402], json.dumps(raw))
            ejected.wait_for(timeout=10_000)
            # A backend the panic guard holds shows as held, not serving.
            held_id = backend_id_for("127.0.0.1", 9403)
            held_raw = json.loads(redis_client.hget(keys.backends(pool_name), held_id))
            now_ms = int(time.time() * 1000)
            held_raw.update(guard_since_ms=now_ms, guard_seen_ms=now_ms, guard_for="health_fail")
            redis_client.hset(keys.backends(pool_name), held_id, json.dumps(held_raw))
            held = card.locator('tr[data-address="127.0.0.1:9403"] .badge.held')
            held.wait_for(timeout=10_000)
            assert held.text_content() == "held"
            assert "panic guard holds its removal (health_fail)" in (
                held.get_attribute("title") or ""
            )
            assert "1 held by the panic guard" in card.locator(".chips").inner_text()
            page.wait_for_timeout(300)  # let the toast settle for the picture
            ARTIFACTS.mkdir(exist_ok=True)
            page.screenshot(path=str(ARTIFACTS / "dashboard-actions.png"), full_page=True)
            assert errors == []
        finally:
            browser.close()
    assert (ARTIFACTS / "dashboard-actions.png").stat().st_size > 10_000


def _seed_signals(redis_url: str, pool: str, client: redis.Redis) -> dict[str, str]:
    """Two leased backends with heartbeats, thin-client outcomes over ten
    stored samples (one backend losing 20% of its calls), as a running
    admin process would have stored them before the page opened."""
    from admin_api.signals import SAMPLE_SECONDS

    async def register() -> dict[str, str]:
        store = RegistryStore.from_url(redis_url)
        try:
            assert await store.put_pool(PoolConfig(name=pool), actor="test")
            ids = {}
            for port, latency in ((9601, 3.0), (9602, 12.0)):
                lease = await store.register(
                    pool=pool, host="127.0.0.1", ip="127.0.0.1", port=port, lease_ttl_ms=600_000
                )
                load = {"qps": 40.0, "in_flight": 1, "latency_ms": latency, "utilization": -1.0}
                await store.heartbeat(pool, lease.backend_id, lease.lease_id, load)
                ids[f"127.0.0.1:{port}"] = lease.backend_id
            return ids
        finally:
            await store.close()

    ids = asyncio.run(register())
    good, bad = ids["127.0.0.1:9601"], ids["127.0.0.1:9602"]
    now = time.time()
    for i in range(10):
        ts = now - (10 - i) * SAMPLE_SECONDS
        sample = {
            "ts_ms": int(ts * 1000),
            "calls_per_s": 60.0 + 4 * i,
            "success_rate": 0.9,
            "latency_ms": 7.5,
            "drops_per_s": 0.0,
            "backends": {
                good: {"qps": 40.0, "latency_ms": 3.0, "finished": 50, "received": 50},
                bad: {"qps": 40.0, "latency_ms": 12.0, "finished": 50, "received": 40},
            },
        }
        client.hset(keys.signals(pool), str(int(ts // SAMPLE_SECONDS)), json.dumps(sample))
    return ids


@pytest.mark.parametrize("width", [1280, 420])
def test_dashboard_golden_signals(
    admin: AdminProcess, dash_redis_url: str, dash_redis: redis.Redis, pool_name: str, width: int
) -> None:
    from playwright.sync_api import sync_playwright

    ids = _seed_signals(dash_redis_url, pool_name, dash_redis)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": width, "height": 900})
            errors: list[str] = []
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            page.goto(admin.url + "/")
            card = page.locator(f'section.pool[data-pool="{pool_name}"]')
            card.locator("tbody tr[data-backend]").first.wait_for(timeout=15_000)
            good = card.locator('tr[data-address="127.0.0.1:9601"]')
            bad = card.locator('tr[data-address="127.0.0.1:9602"]')
            # Per backend: success from outcomes, p99 from heartbeat samples.
            assert good.locator("td.success").inner_text() == "100%"
            assert bad.locator("td.success").inner_text() == "80.0%"
            assert "bad" in (bad.locator("td.success").get_attribute("class") or "")
            assert bad.locator("td.p99").inner_text() == "12 ms"
            # Per pool.
            assert card.locator(".stat.success span").inner_text() == "90.0%"
            assert card.locator(".stat.p50 span").inner_text() == "3.0 ms"
            assert card.locator(".stat.p99 span").inner_text() == "12 ms"
            # The chart is filled from the stored history at once.
            points = int(card.locator("svg.spark").get_attribute("data-points") or "0")
            assert points >= 10
            # Unknown is "—", not -100%.
            if width > 720:
                assert good.locator("td.util").inner_text() == "—"
            # The events timeline.
            kinds = card.locator(".timeline li").evaluate_all("els => els.map(e => e.dataset.kind)")
            assert kinds.count("registered") == 2 and "pool_configured" in kinds
            # Nothing wider than the screen; the signals stay in view.
            assert page.evaluate("document.documentElement.scrollWidth") <= width
            box = bad.locator("td.p99").bounding_box()
            assert box is not None and box["x"] + box["width"] <= width
            ARTIFACTS.mkdir(exist_ok=True)
            page.wait_for_timeout(200)
            page.screenshot(path=str(ARTIFACTS / f"dashboard-signals-{width}.png"), full_page=True)
            assert errors == []
        finally:
            browser.close()
    assert ids and (ARTIFACTS / f"dashboard-signals-{width}.png").stat().st_size > 10_000


def test_dashboard_opens_logged_in_from_the_token_fragment(
    admin: AdminProcess,
    dash_redis_url: str,
    dash_redis: redis.Redis,
    pool_name: str,
) -> None:
    """The link `lookaside up` prints: /#token=... stores the token as the
    dialog would, clears it from the address bar, and actions need no prompt."""
    from playwright.sync_api import sync_playwright

    ids = _seed(admin, dash_redis_url, pool_name, dash_redis)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 760})
            requested: list[str] = []
            page.on("request", lambda request: requested.append(request.url))
            page.goto(f"{admin.url}/#token={TOKEN}")
            card = page.locator(f'section.pool[data-pool="{pool_name}"]')
            card.wait_for(timeout=15_000)
            assert "token" not in page.url  # the fragment is cleared
            assert page.locator("#token-button").inner_text() == "Token set ✓"
            target = card.locator('tr[data-address="127.0.0.1:9401"]')
            target.locator('button[data-action="drain"]').click()
            wait_until(lambda: _state(dash_redis, pool_name, ids[9401]) == "draining", timeout=10)
            assert not page.locator("#token-dialog").is_visible()
            assert not any(TOKEN in url for url in requested)  # never sent in a URL
        finally:
            browser.close()


def _seed_xds(client: redis.Redis, pool: str) -> None:
    """Load from grpclb and xDS clients and one replica's xDS streams, as
    balancers write them (balancer_server.load_reports, .xds_streams)."""
    now = time.time()
    bucket = keys.load_bucket(pool, int(now // 10))
    client.hset(
        bucket,
        mapping={
            "started": 900, "finished": 900, "known_received": 900, "reports": 9,
            "xds:started": 300, "xds:finished": 300, "xds:known_received": 300, "xds:reports": 3,
        },
    )  # fmt: skip
    client.expire(bucket, 960)
    eds = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment"
    lds = "type.googleapis.com/envoy.config.listener.v3.Listener"
    state = {"acks": 1, "nacks": 0, "nacking": False, "nacked_version": None}
    streams = [
        {
            "stream_id": "r1/1", "peer": "ipv4:127.0.0.1:40001", "node_id": "checkout-7f9c",
            "opened_at": now - 30,
            "types": {
                lds: {**state, "acked_version": "4", "acked_at": now - 29, "nack_error": None},
                eds: {
                    **state, "acked_version": "11", "acked_at": now - 20, "nacks": 1,
                    "nacking": True, "nacked_version": "11", "nacked_at": now - 10,
                    "nack_error": "ClusterLoadAssignment: endpoint weight 0",
                },
            },
        },
    ]  # fmt: skip
    entry = {"ts_ms": int(now * 1000), "total": 1, "streams": streams}
    client.hset(keys.XDS_STREAMS, "balancer-a", json.dumps(entry))


@pytest.mark.parametrize("width", [1280, 420])
def test_dashboard_shows_xds_beside_grpclb(
    admin: AdminProcess, dash_redis: redis.Redis, pool_name: str, width: int
) -> None:
    from playwright.sync_api import sync_playwright

    r = httpx.post(f"{admin.url}/api/v1/pools", json={"name": pool_name}, headers=AUTH)
    assert r.status_code == 201, r.text
    _seed_xds(dash_redis, pool_name)
    dash_redis.hset(
        keys.streams(pool_name),
        "balancer-a",
        json.dumps({"streams": 5, "ts_ms": int(time.time() * 1000)}),
    )
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": width, "height": 900})
            errors: list[str] = []
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            page.goto(admin.url + "/")
            row = page.locator('#xds-streams tr[data-stream="r1/1"]')
            row.wait_for(timeout=15_000)
            summary = page.locator("#streams-summary")
            assert summary.locator('[data-kind="grpclb"]').inner_text() == "grpclb 5"
            assert summary.locator('[data-kind="xds"]').inner_text() == "xDS 1"
            assert summary.locator('[data-kind="nacking"]').inner_text() == "1 NACKing"
            cells = row.locator("td.ver")
            assert cells.nth(0).inner_text() == "4"  # LDS
            assert cells.nth(1).inner_text() == "—"  # RDS: never answered
            eds = cells.nth(3)
            assert eds.inner_text() == "11 NACK 11"
            assert eds.get_attribute("data-nacking") == "1"
            assert "endpoint weight 0" in (eds.locator(".nack").get_attribute("title") or "")
            # The pool's load per source (finished calls/s over the last minute).
            card = page.locator(f'section.pool[data-pool="{pool_name}"]')
            grpclb = card.locator('.by-source [data-source="grpclb"]')
            xds = card.locator('.by-source [data-source="xds"]')
            grpclb.wait_for(timeout=15_000)
            assert grpclb.inner_text().startswith("grpclb ") and grpclb.inner_text() != "grpclb 0"
            assert xds.inner_text().startswith("xDS ") and xds.inner_text() != "xDS 0"
            assert page.evaluate("document.documentElement.scrollWidth") <= width
            ARTIFACTS.mkdir(exist_ok=True)
            page.screenshot(path=str(ARTIFACTS / f"dashboard-xds-{width}.png"), full_page=True)
            assert errors == []
        finally:
            browser.close()
