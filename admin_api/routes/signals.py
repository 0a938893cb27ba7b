"""/api/v1/pools/{pool}/signals: the golden signals of a pool and of each
of its backends (calls per second, success rate, latency p50/p99), now and
over the stored history (admin_api.signals says where each comes from).

The router's lifespan runs the sampler: one sample per pool every
SAMPLE_SECONDS, kept in the registry so a dashboard opened later still
draws its chart from the start. A registry that is away is logged once per
outage; the sampler keeps going and resumes when it is back."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import APIRouter, FastAPI, Query
from pydantic import BaseModel, Field

from admin_api.deps import PoolPath, ReaderDep, StoreDep
from admin_api.routes.pools import load_pool
from admin_api.signals import SAMPLE_SECONDS, Sampler, summarize
from lookaside_registry.asyncutil import cancel_and_wait, cancelling
from lookaside_registry.errors import Unavailable
from server_common.schemas.common import COMMON, NOT_FOUND

log = logging.getLogger("lookaside.admin")
Number = float | None


class BackendSignals(BaseModel):
    id: str
    address: str
    state: str
    calls_per_s: Number = Field(description="from the backend's last heartbeat; probes excluded")
    success_rate: Number = Field(description="0..1 over the window; None when no client reported")
    latency_ms: Number = Field(description="mean latency of the last heartbeat")
    latency_p50_ms: Number
    latency_p99_ms: Number
    in_flight: Number
    utilization: Number = Field(description="0..1 when the backend reports it, else None")


class Point(BaseModel):
    ts_ms: int
    calls_per_s: Number = None
    success_rate: Number = None
    latency_ms: Number = None


class PoolSignals(BaseModel):
    pool: str
    ts_ms: int
    window_s: int = Field(description="the span the success rate and percentiles cover")
    sample_s: int = Field(description="seconds between stored samples")
    calls_per_s: Number = Field(description="client-reported over 10 s, else backends' heartbeats")
    success_rate: Number
    latency_p50_ms: Number
    latency_p99_ms: Number
    drops_per_s: Number
    backends: list[BackendSignals]
    history: list[Point] = Field(description="stored samples, oldest first")
    reported: list[Point] = Field(description="client-reported calls/s per 10 s bucket, 15 min")


@contextlib.asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    sampler = Sampler(app.state.store)
    app.state.signals_sampler = sampler
    task = asyncio.create_task(_sample_forever(sampler), name="signals-sampler")
    try:
        yield
    finally:
        await cancel_and_wait([task])


async def _sample_forever(sampler: Sampler, period: float = SAMPLE_SECONDS) -> None:
    failing = False
    while True:
        try:
            await sampler.record_all()
            if failing:
                log.info("signals: sampling resumed")
            failing = False
        except Unavailable as exc:
            if cancelling():  # a cancellation the Redis client turned into an error
                raise asyncio.CancelledError from exc
            if not failing:  # once per outage, not every 5 s
                log.warning("signals: sampling failed, retrying (%s)", exc)
            failing = True
        await asyncio.sleep(period - time.time() % period)


router = APIRouter(
    prefix="/pools/{pool}/signals",
    tags=["signals"],
    responses={**COMMON, **NOT_FOUND},
    lifespan=lifespan,
)


@router.get("", response_model=PoolSignals, summary="Golden signals of a pool and its backends")
async def read(
    pool: PoolPath,
    store: StoreDep,
    _reader: ReaderDep,
    minutes: Annotated[
        int, Query(ge=1, le=30, description="history to return, and the window of rates")
    ] = 5,
) -> PoolSignals:
    snap = await load_pool(store, pool)
    now = time.time()
    history = await store.signal_history(pool, int((now - minutes * 60) * 1000))
    # The newest figures: a fresh sample (not stored) over the last one.
    current: dict[str, Any] = await Sampler(store).sample(snap, now)
    overall = summarize(history)
    backends = []
    for b in snap.backends:
        row = current["backends"].get(b.id, {})
        mine = summarize(history, b.id)
        backends.append(
            BackendSignals(
                id=b.id,
                address=f"[{b.ip}]:{b.port}" if ":" in b.ip else f"{b.ip}:{b.port}",
                state=b.state.value,
                calls_per_s=row.get("qps"),
                success_rate=mine["success_rate"],
                latency_ms=row.get("latency_ms"),
                latency_p50_ms=mine["latency_p50_ms"],
                latency_p99_ms=mine["latency_p99_ms"],
                in_flight=row.get("in_flight"),
                utilization=row.get("utilization"),
            )
        )
    return PoolSignals(
        pool=pool,
        ts_ms=int(now * 1000),
        window_s=minutes * 60,
        sample_s=SAMPLE_SECONDS,
        calls_per_s=current["calls_per_s"],
        success_rate=overall["success_rate"],
        latency_p50_ms=overall["latency_p50_ms"],
        latency_p99_ms=overall["latency_p99_ms"],
        drops_per_s=current["drops_per_s"],
        backends=backends,
        history=[
            Point(
                ts_ms=s["ts_ms"],
                calls_per_s=s.get("calls_per_s"),
                success_rate=s.get("success_rate"),
                latency_ms=s.get("latency_ms"),
            )
            for s in history
        ],
        reported=[
            Point(ts_ms=r.ts_ms, calls_per_s=r.calls_per_s)
            for r in await store.reported_call_rates(pool, now)
        ],
    )
