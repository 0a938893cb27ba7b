"""Active health checking of registered backends over grpc.health.v1.

Each backend is probed by one balancer replica at a time. Replicas announce
themselves in the Redis hash `lookaside:replicas` (replica id -> last seen,
ms) and every replica computes the same owner for a backend by rendezvous
hashing over the live replicas, so two replicas probe disjoint shares of a
pool and a survivor takes over a dead replica's share within a few
seconds. Health state is written to Redis (lookaside.registry.health), so
every replica's lists agree.

A probe is a Check on the pool's interval with its timeout (which catches
a frozen backend), plus a Watch stream where the backend supports it, so a
backend that turns NOT_SERVING leaves the lists at once.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time

import grpc
import grpc.aio
import redis.exceptions
from grpc_health.v1 import health_pb2, health_pb2_grpc

from balancer_server import metrics
from lookaside.asyncutil import cancel_and_wait, cancelling
from lookaside.registry.health import HealthStore, HealthWrite
from lookaside.registry.model import Backend, BackendState, PoolConfig, PoolSnapshot
from lookaside.registry.store import RegistryStore
from lookaside.registry.watcher import RegistryWatcher

log = logging.getLogger("lookaside.health")

REPLICAS_KEY = "lookaside:replicas"
SERVING = health_pb2.HealthCheckResponse.SERVING


def owner(backend_id: str, replicas: list[str]) -> str:
    """Rendezvous hashing: the replica with the highest score probes it."""
    return max(
        replicas,
        key=lambda r: hashlib.blake2b(f"{r}|{backend_id}".encode(), digest_size=8).digest(),
    )


class Prober:
    """Probes one backend until cancelled."""

    def __init__(
        self, checker: HealthChecker, pool: str, backend: Backend, config: PoolConfig
    ) -> None:
        self.checker = checker
        self.pool = pool
        self.backend = backend
        self.config = config
        self.address = (
            f"[{backend.ip}]:{backend.port}"
            if ":" in backend.ip
            else f"{backend.ip}:{backend.port}"
        )
        self._kick = asyncio.Event()
        self._watch_status: int | None = None
        self.task = asyncio.create_task(self._run(), name=f"probe-{pool}-{backend.id}")

    def stop(self) -> None:
        self.task.cancel()

    async def _check(self, stub: health_pb2_grpc.HealthStub) -> tuple[bool, str]:
        try:
            reply = await stub.Check(
                health_pb2.HealthCheckRequest(service=self.config.health_service),
                timeout=self.config.health_timeout_ms / 1000,
            )
        except grpc.aio.AioRpcError as exc:
            return False, f"Check {exc.code().name}"
        if reply.status != SERVING:
            return False, f"Check {health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)}"
        return True, "Check SERVING"

    async def _watch(self, stub: health_pb2_grpc.HealthStub) -> None:
        while not cancelling():
            try:
                call = stub.Watch(health_pb2.HealthCheckRequest(service=self.config.health_service))
                async for reply in call:
                    self._watch_status = reply.status
                    self._kick.set()
            except grpc.aio.AioRpcError as exc:
                if exc.code() is grpc.StatusCode.UNIMPLEMENTED:
                    return  # Check alone, then
            self._watch_status = None
            await asyncio.sleep(self.config.health_interval_ms / 1000)

    async def _run(self) -> None:
        cfg = self.config
        channel = grpc.aio.insecure_channel(self.address)
        stub = health_pb2_grpc.HealthStub(channel)
        watch = asyncio.create_task(self._watch(stub))
        fails = oks = 0
        try:
            while not cancelling():
                ok, detail = await self._check(stub)
                if self._watch_status is not None and self._watch_status != SERVING:
                    ok, detail = (
                        False,
                        "Watch "
                        + health_pb2.HealthCheckResponse.ServingStatus.Name(self._watch_status),
                    )
                    fails = max(fails, cfg.unhealthy_threshold - 1)  # Watch is authoritative
                if ok:
                    oks, fails = oks + 1, 0
                else:
                    fails, oks = fails + 1, 0
                metrics.HEALTH_PROBES.labels(self.pool, "ok" if ok else "fail").inc()
                state = self.checker.state_of(self.pool, self.backend.id)
                if not ok and fails >= cfg.unhealthy_threshold and state is BackendState.SERVING:
                    await self.checker.write(self.pool, self.backend.id, False, detail)
                elif ok and oks >= cfg.healthy_threshold and state is BackendState.UNHEALTHY:
                    await self.checker.write(self.pool, self.backend.id, True, detail)
                self._kick.clear()
                try:
                    await asyncio.wait_for(self._kick.wait(), cfg.health_interval_ms / 1000)
                except TimeoutError:
                    pass
        finally:
            watch.cancel()
            await channel.close()


class HealthChecker:
    def __init__(
        self,
        store: RegistryStore,
        watcher: RegistryWatcher,
        replica_id: str,
        *,
        max_share: float = 0.5,
        membership_interval: float = 1.0,
    ) -> None:
        self.store = store
        self.health = HealthStore(store)
        self.watcher = watcher
        self.replica_id = replica_id
        self.max_share = max_share
        self.membership_interval = membership_interval
        self.replicas: list[str] = [replica_id]
        self.probers: dict[tuple[str, str], Prober] = {}
        self._warned: dict[tuple[str, str], float] = {}
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self.watcher.hooks.append(self._on_change)
        self._task = asyncio.create_task(self._membership(), name="health-membership")

    async def stop(self) -> None:
        tasks = [p.task for p in self.probers.values()] + ([self._task] if self._task else [])
        await cancel_and_wait(tasks)
        self.probers.clear()
        try:
            await self.store.redis.hdel(REPLICAS_KEY, self.replica_id)
        except (redis.exceptions.RedisError, OSError):
            pass

    def state_of(self, pool: str, backend_id: str) -> BackendState | None:
        snap = self.watcher.get(pool)
        if snap is None:
            return None
        for b in snap.backends:
            if b.id == backend_id:
                return b.state
        return None

    async def write(self, pool: str, backend_id: str, healthy: bool, detail: str) -> None:
        try:
            result = await self.health.set_health(
                pool,
                backend_id,
                healthy,
                max_share=self.max_share,
                actor=f"health:{self.replica_id}",
                detail=detail,
            )
        except (redis.exceptions.RedisError, OSError) as exc:
            log.warning("health pool=%s backend=%s: cannot write state (%s)", pool, backend_id, exc)
            return
        if result is HealthWrite.CHANGED:
            log.info(
                "health pool=%s backend=%s -> %s (%s)",
                pool,
                backend_id,
                "serving" if healthy else "unhealthy",
                detail,
            )
        elif result is HealthWrite.HELD_BY_PANIC_GUARD:
            metrics.PANICS.labels(pool, "health").inc()
            now = time.monotonic()
            if now - self._warned.get((pool, backend_id), -1e9) < 30:
                return
            self._warned[(pool, backend_id)] = now
            log.warning(
                "panic guard pool=%s: backend %s failing (%s) but kept listed",
                pool,
                backend_id,
                detail,
            )

    async def _membership(self) -> None:
        while not cancelling():
            try:
                now = int(time.time() * 1000)
                await self.store.redis.hset(REPLICAS_KEY, self.replica_id, now)
                seen = await self.store.redis.hgetall(REPLICAS_KEY)
                stale = 3 * self.membership_interval * 1000
                live = sorted(
                    (k.decode() if isinstance(k, bytes) else k)
                    for k, v in seen.items()
                    if now - int(v) <= stale
                )
                if self.replica_id not in live:
                    live.append(self.replica_id)
                if live != self.replicas:
                    log.info("health: live replicas %s", ",".join(live))
                    self.replicas = sorted(live)
                    self.reconcile_all()
            except asyncio.CancelledError:
                raise
            except (redis.exceptions.RedisError, OSError) as exc:
                if cancelling():
                    raise
                log.debug("health: membership update failed (%s)", exc)
            await asyncio.sleep(self.membership_interval)

    def _on_change(self, pool: str, snapshot: PoolSnapshot | None) -> None:
        self.reconcile(pool, snapshot)

    def reconcile_all(self) -> None:
        pools = set(self.watcher.snapshots) | {p for p, _ in self.probers}
        for pool in pools:
            self.reconcile(pool, self.watcher.get(pool))

    def reconcile(self, pool: str, snapshot: PoolSnapshot | None) -> None:
        wanted: dict[str, Backend] = {}
        if snapshot is not None and snapshot.config.health_checks:
            for b in snapshot.backends:
                if (
                    b.state in (BackendState.SERVING, BackendState.UNHEALTHY)
                    and owner(b.id, self.replicas) == self.replica_id
                ):
                    wanted[b.id] = b
        for (p, bid), prober in list(self.probers.items()):
            if p != pool:
                continue
            current = wanted.get(bid)
            if (
                current is None
                or (current.ip, current.port) != (prober.backend.ip, prober.backend.port)
                or (snapshot is not None and snapshot.config != prober.config)
            ):
                prober.stop()
                del self.probers[(p, bid)]
        for bid, b in wanted.items():
            if (pool, bid) not in self.probers:
                assert snapshot is not None
                self.probers[(pool, bid)] = Prober(self, pool, b, snapshot.config)
        metrics.HEALTH_PROBERS.set(len(self.probers))
