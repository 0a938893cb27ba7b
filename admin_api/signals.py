"""Golden signals per pool and per backend, and their stored history.

Every SAMPLE_SECONDS the admin process takes one sample per pool and keeps
it in the registry for half an hour, one per slot of SAMPLE_SECONDS, so two
admin replicas writing the same slot agree (lookaside_registry.signals says
how it is stored). A sample holds, per backend and for the pool:

- calls per second: what the backend's heartbeat says it served (health
  probes are not counted, see client_lib.load); for the pool, the calls
  clients reported finishing in the last closed 10 s load buckets (at
  least two, and at least twice the pool's report interval, so a steady
  load reads steady whatever the phase of reports and samples), else the
  sum over backends;
- success rate: of the calls thin clients finished on a backend over the
  last twice the report interval (at least two samples), the share known
  to have reached it (their per-backend outcomes,
  lookaside.lb.v1.ClientStatsExtension). None when no thin client reported
  calls for it in that window; `finished` and `received` are the calls
  since the previous sample;
- latency: the mean the backend's heartbeat reports. Heartbeats carry a
  mean per interval, not a histogram, so p50 and p99 are taken over the
  stored samples of a window, weighted by calls.

A value that is not known is None (the dashboard shows "—"), never a
made-up 0 or -1. Outcome counters are running totals that no reader
resets; the sampler keeps its own recent readings and takes differences
(a total that went down was started again: the hash expired).
"""

from __future__ import annotations

import logging
import math
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from admin_api.metrics import BACKEND_CALLS
from lookaside_registry.load import BUCKET_SECONDS
from lookaside_registry.model import PoolSnapshot
from lookaside_registry.outlier import Outcomes, differences
from lookaside_registry.port import SignalPort
from lookaside_registry.signals import SLOT_SECONDS, slot_of

log = logging.getLogger("lookaside.admin")

# One sample per slot of the stored history.
SAMPLE_SECONDS = SLOT_SECONDS
# A load bucket counts as closed this long after it ended (balancers flush
# reports about once a second).
CLOSE_DELAY_SECONDS = 2.0


def window_seconds(report_interval_ms: int) -> float:
    """What a sample looks back over: twice the report interval, at least
    two samples and two load buckets."""
    return max(2 * report_interval_ms / 1000, 2 * SAMPLE_SECONDS, 2 * BUCKET_SECONDS)


def _ratio(num: int, den: int) -> float | None:
    return round(num / den, 4) if den > 0 else None


def percentile(values: list[tuple[float, float]], q: float) -> float | None:
    """The q-quantile (0..1) of (value, weight) pairs; None when empty."""
    points = sorted((v, w) for v, w in values if w > 0)
    total = sum(w for _, w in points)
    if not points or total <= 0:
        return None
    seen = 0.0
    for value, weight in points:
        seen += weight
        if seen >= q * total - 1e-9:
            return round(value, 3)
    return round(points[-1][0], 3)


@dataclass
class Sampler:
    """Takes samples; keeps its own recent readings of the outcome totals
    per pool to turn them into counts over a sample and over a window."""

    store: SignalPort
    _readings: dict[str, deque[tuple[float, dict[str, Outcomes]]]] = field(default_factory=dict)

    def _outcomes(
        self, pool: str, now: float, totals: dict[str, Outcomes], window: float
    ) -> tuple[dict[str, Outcomes], dict[str, Outcomes]]:
        """(calls since the previous sample, calls over the window)."""
        readings = self._readings.setdefault(pool, deque())
        previous = readings[-1][1] if readings else None
        while readings and readings[0][0] < now - window - SAMPLE_SECONDS / 2:
            readings.popleft()
        # The first reading has no past: the window is all there is so far.
        base = readings[0][1] if readings else {}
        readings.append((now, totals))
        return differences(totals, totals if previous is None else previous), differences(
            totals, base
        )

    async def _pool_calls(self, pool: str, now: float, window: float) -> float | None:
        """Calls per second clients reported over the closed load buckets of
        the window; None when none of them holds a report."""
        buckets = math.ceil(window / BUCKET_SECONDS)
        seconds = buckets * BUCKET_SECONDS
        rates = await self.store.reported_call_rates(pool, now - CLOSE_DELAY_SECONDS, seconds)
        if not rates:
            return None
        return round(sum(r.calls_per_s for r in rates) / buckets, 3)

    async def sample(self, snap: PoolSnapshot, now: float | None = None) -> dict[str, Any]:
        now = time.time() if now is None else now
        pool = snap.name
        window = window_seconds(snap.config.report_interval_ms)
        windows = await self.store.load_windows(pool, now)
        step, recent = self._outcomes(pool, now, await self.store.outcome_counts(pool), window)
        for bid, o in step.items():
            BACKEND_CALLS.labels(pool, bid, "received").inc(o.received)
            BACKEND_CALLS.labels(pool, bid, "lost").inc(o.lost)
        backends: dict[str, dict[str, Any]] = {}
        for b in snap.backends:
            load = b.load or {}
            qps = load.get("qps")
            o = step.get(b.id, Outcomes())
            w = recent.get(b.id, Outcomes())
            backends[b.id] = {
                "qps": round(qps, 3) if qps is not None else None,
                "latency_ms": round(load["latency_ms"], 3)
                if qps and "latency_ms" in load
                else None,
                "in_flight": load.get("in_flight"),
                "utilization": load["utilization"] if load.get("utilization", -1) >= 0 else None,
                "finished": o.finished,
                "received": o.received,
                "success_rate": _ratio(w.received, w.finished),
            }
        ten = windows[0]
        heard = [v["qps"] for v in backends.values() if v["qps"] is not None]
        calls = await self._pool_calls(pool, now, window)
        if calls is None and heard:
            calls = round(sum(heard), 3)
        finished = sum(w.finished for bid, w in recent.items() if bid in backends)
        received = sum(w.received for bid, w in recent.items() if bid in backends)
        latencies = [
            (v["latency_ms"], v["qps"]) for v in backends.values() if v["latency_ms"] is not None
        ]
        weighted = sum(lat * q for lat, q in latencies)
        weight = sum(q for _, q in latencies)
        return {
            "ts_ms": int(now * 1000),
            "calls_per_s": calls,
            "success_rate": _ratio(received, finished),
            "latency_ms": round(weighted / weight, 3) if weight > 0 else None,
            "drops_per_s": round(ten.drops_per_second, 3),
            "backends": backends,
        }

    async def record(self, snap: PoolSnapshot, now: float | None = None) -> dict[str, Any]:
        """Takes a sample and stores it under its slot, dropping old ones."""
        now = time.time() if now is None else now
        sample = await self.sample(snap, now)
        await self.store.put_signal_sample(snap.name, slot_of(now), sample)
        return sample

    async def record_all(self) -> int:
        count = 0
        for pool in await self.store.list_pools():
            snap = await self.store.snapshot(pool)
            if snap is not None:
                await self.record(snap)
                count += 1
        return count


def summarize(history: list[dict[str, Any]], backend_id: str | None = None) -> dict[str, Any]:
    """p50/p99 latency and the success rate over the samples given, for the
    pool or one backend."""
    latencies: list[tuple[float, float]] = []
    finished = received = 0
    for s in history:
        rows = (
            [s["backends"].get(backend_id)] if backend_id else list(s.get("backends", {}).values())
        )
        for row in rows:
            if not row:
                continue
            if row.get("latency_ms") is not None and row.get("qps"):
                latencies.append((row["latency_ms"], row["qps"]))
            finished += row.get("finished", 0)
            received += row.get("received", 0)
    return {
        "latency_p50_ms": percentile(latencies, 0.5),
        "latency_p99_ms": percentile(latencies, 0.99),
        "success_rate": _ratio(received, finished),
    }


def finite(value: Any) -> Any:
    """JSON-safe: NaN and infinities become None."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value
