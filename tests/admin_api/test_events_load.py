"""/api/v1/pools/{pool}/events and /load against the real test Redis."""

from __future__ import annotations

import json
import time

import httpx
import pytest
import redis.asyncio as aioredis

from balancer_server.load_reports import LoadReportSink
from lookaside_proto.lb.v1 import load_balancer_pb2 as lb
from lookaside_registry import keys
from lookaside_registry.store import RegistryStore
from tests.admin_api.conftest import AUTH

pytestmark = pytest.mark.asyncio


async def test_events_name_the_admin_actor(
    client: httpx.AsyncClient, pool: str, static_backend
) -> None:  # type: ignore[no-untyped-def]
    b = await static_backend(pool, 9101)
    await client.post(f"/api/v1/pools/{pool}/backends/{b['id']}/drain", headers=AUTH)
    await client.put(
        f"/api/v1/pools/{pool}/backends/{b['id']}/weight", json={"weight": 4}, headers=AUTH
    )

    r = await client.get(f"/api/v1/pools/{pool}/events", headers=AUTH)
    assert r.status_code == 200
    events = r.json()["events"]
    kinds = [e["kind"] for e in events]
    assert kinds[:4] == ["weight_changed", "drained", "static_registered", "pool_configured"]
    for e in events[:4]:
        assert e["actor"] == "admin:token@127.0.0.7"  # the client address of the test transport
        assert e["ts_ms"] > 0
        assert e["version"] > 0
    assert events[0]["backend"] == b["id"]
    assert json.loads(events[0]["detail"]) == {"weight": 4}
    assert events[1]["detail"] == "serving->draining"

    r = await client.get(f"/api/v1/pools/{pool}/events", params={"limit": 1}, headers=AUTH)
    assert [e["kind"] for e in r.json()["events"]] == ["weight_changed"]


async def test_events_limits_and_404(client: httpx.AsyncClient, pool: str, pool_name: str) -> None:
    for limit in (0, 1001, -5, 10**20, "ten"):
        r = await client.get(f"/api/v1/pools/{pool}/events", params={"limit": limit}, headers=AUTH)
        assert r.status_code == 422, limit
        assert "limit" in r.json()["detail"]
    r = await client.get(f"/api/v1/pools/{pool_name}-gone/events", headers=AUTH)
    assert r.status_code == 404


def _stats(started: int, finished: int, drops: dict[str, int] | None = None) -> lb.ClientStats:
    stats = lb.ClientStats(
        num_calls_started=started,
        num_calls_finished=finished,
        num_calls_finished_known_received=finished,
    )
    for token, n in (drops or {}).items():
        stats.calls_finished_with_drop.add(load_balance_token=token, num_calls=n)
    return stats


async def test_load_sums_client_reports(
    client: httpx.AsyncClient, pool: str, redis_url: str, store: RegistryStore
) -> None:
    raw = aioredis.Redis.from_url(redis_url)
    try:
        # Reports written by the balancer's own sink, as a balancer would.
        sink = LoadReportSink(store, replica_id="replica-a")
        sink.add(pool, _stats(100, 90, {"overload": 5}))
        sink.add(pool, _stats(50, 50))
        sink.set_stream_count(pool, 3)
        await sink.flush()
        # An older bucket (5 minutes ago) counts in 15m only; a stale replica is left out.
        old = int((time.time() - 300) // 10)
        await raw.hset(keys.load_bucket(pool, old), mapping={"started": 1000, "reports": 10})
        stale = json.dumps({"streams": 99, "ts_ms": int(time.time() * 1000) - 60_000})
        await raw.hset(keys.streams(pool), "replica-gone", stale)
    finally:
        await raw.aclose()
    lease = await store.register(pool=pool, host="127.0.0.1", ip="127.0.0.1", port=9102)
    await store.heartbeat(pool, lease.backend_id, lease.lease_id, {"qps": 40.0, "utilization": 0.5})

    r = await client.get(f"/api/v1/pools/{pool}/load", headers=AUTH)
    assert r.status_code == 200, r.text
    data = r.json()
    windows = {w["window"]: w for w in data["windows"]}
    assert list(windows) == ["10s", "1m", "15m"]
    ten = windows["10s"]
    assert ten["counts"] == {
        "started": 150,
        "finished": 140,
        "failed_to_send": 0,
        "known_received": 140,
        "reports": 2,
        "drops": {"overload": 5},
    }
    assert 10 <= ten["seconds"] <= 20
    assert ten["rates"]["started"] == pytest.approx(150 / ten["seconds"], rel=0.01)
    assert ten["rates"]["dropped"] > 0
    assert windows["1m"]["counts"]["started"] == 150
    assert windows["15m"]["counts"]["started"] == 1150
    assert windows["15m"]["counts"]["reports"] == 12
    assert data["total"]["started"] == 150
    assert data["streams"] == [
        {"replica": "replica-a", "streams": 3, "ts_ms": data["streams"][0]["ts_ms"]}
    ]
    assert data["streams_total"] == 3
    assert [(b["id"], b["load"]) for b in data["backends"]] == [
        (lease.backend_id, {"qps": 40.0, "utilization": 0.5})
    ]


async def test_load_of_quiet_pool_is_zero(client: httpx.AsyncClient, pool: str) -> None:
    r = await client.get(f"/api/v1/pools/{pool}/load", headers=AUTH)
    assert r.status_code == 200
    for w in r.json()["windows"]:
        assert w["counts"]["started"] == 0
        assert w["rates"]["started"] == 0.0
    assert r.json()["streams_total"] == 0


async def test_load_of_unknown_pool_is_404(client: httpx.AsyncClient, pool_name: str) -> None:
    r = await client.get(f"/api/v1/pools/{pool_name}/load", headers=AUTH)
    assert r.status_code == 404
