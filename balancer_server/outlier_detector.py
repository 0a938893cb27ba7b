"""Runs outlier detection (lookaside_registry.outlier) for the pools this
replica owns.

Each pool is judged by one replica at a time, its owner by rendezvous
hashing over the live replicas. One loop per process wakes twice a second:
it ends ejections that are due, and at the end of each pool's interval
reads the evidence added since the previous judgement (the running totals
are not reset: OutlierStore.read_interval) and who accused whom, and
ejects the outliers that enough client streams agree on, and the backends
whose own latency stands out. Nothing runs per stream. While Redis is
unreachable nothing is judged, ejected or let back.
"""

from __future__ import annotations

import asyncio
import logging
import time

from balancer_server import metrics
from balancer_server.replicas import ReplicaSet
from lookaside_registry.asyncutil import cancel_and_wait, cancelling
from lookaside_registry.errors import Unavailable
from lookaside_registry.model import BackendState, PoolSnapshot
from lookaside_registry.outlier import judge, judge_latency, qualified, unagreed
from lookaside_registry.port import OutlierPort
from lookaside_registry.watcher import RegistryWatcher

log = logging.getLogger("lookaside.outlier")


def _ejection_due(snapshot: PoolSnapshot, now_ms: float) -> bool:
    return any(
        b.state is BackendState.EJECTED and b.ejected_until_ms <= now_ms for b in snapshot.backends
    )


class OutlierDetector:
    def __init__(
        self,
        outliers: OutlierPort,
        watcher: RegistryWatcher,
        replicas: ReplicaSet,
        *,
        max_share: float = 0.5,
        tick: float = 0.5,
    ) -> None:
        self.outliers = outliers
        self.watcher = watcher
        self.replicas = replicas
        self.max_share = max_share
        self.tick = tick
        self._due: dict[str, float] = {}
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="outlier-detection")

    async def stop(self) -> None:
        if self._task is not None:
            await cancel_and_wait([self._task])

    async def _run(self) -> None:
        while not cancelling():
            try:
                for pool, snapshot in list(self.watcher.snapshots.items()):
                    await self.check(pool, snapshot)
            except asyncio.CancelledError:
                raise
            except Unavailable as exc:
                if cancelling():
                    raise
                log.debug("outlier detection: Redis unreachable (%s); judging nothing", exc)
            await asyncio.sleep(self.tick)

    async def check(self, pool: str, snapshot: PoolSnapshot) -> None:
        if not self.replicas.owns(f"outlier|{pool}"):
            self._due.pop(pool, None)
            return
        config = snapshot.config
        now = time.monotonic()
        interval = config.outlier_detection.interval_ms / 1000
        due = self._due.setdefault(pool, now + interval)
        verdicts = None
        passed: set[str] = set()
        if now >= due:
            self._due[pool] = now + interval
            # Read even when the pool is not judged, so the judged totals
            # stay current and counters of backends long gone are dropped.
            reading = await self.outliers.read_interval(pool, config.outlier_detection.interval_ms)
            if config.outlier_detection.enabled:
                outcomes, accusers = reading.evidence, reading.accusers
                verdicts = judge(outcomes, config, accusers)
                refused = unagreed(outcomes, config, accusers)
                if refused:
                    metrics.OUTLIER_UNAGREED.labels(pool).inc(len(refused))
                    log.info(
                        "outlier pool=%s: not ejecting %s: fewer than %d client streams "
                        "reported lost calls against it",
                        pool, ",".join(refused), config.outlier_detection.min_reporters,
                    )  # fmt: skip
                judged = {v.backend_id for v in verdicts}
                verdicts += [
                    v for v in judge_latency(snapshot, config) if v.backend_id not in judged
                ]
                # A backend refused for want of agreement did not pass either.
                passed = set(qualified(outcomes, config)) - judged - set(refused)
                passed -= {v.backend_id for v in verdicts}
        if verdicts is None and not _ejection_due(snapshot, time.time() * 1000):
            return
        result = await self.outliers.sweep(
            config,
            verdicts,
            passed=passed,
            max_share=self.max_share,
            actor=f"outlier:{self.replicas.replica_id}",
        )
        for bid in result.ejected:
            detail = next(v.detail for v in verdicts or () if v.backend_id == bid)
            log.warning("outlier pool=%s backend=%s ejected: %s", pool, bid, detail)
        if result.ejected:
            metrics.OUTLIER_EJECTIONS.labels(pool).inc(len(result.ejected))
        for bid in result.ended:
            log.info("outlier pool=%s backend=%s: ejection ended", pool, bid)
        if result.held:
            metrics.PANICS.labels(pool, "outlier").inc()
            log.warning(
                "outlier pool=%s: %s judged outliers but kept listed (ejection limits)",
                pool,
                ",".join(result.held),
            )
