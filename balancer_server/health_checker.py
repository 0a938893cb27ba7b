"""Active health checking of registered backends over grpc.health.v1.

Each backend is probed by one balancer replica at a time: its owner by
rendezvous hashing over the live replicas (balancer_server.replicas), so
two replicas probe disjoint shares of a pool and a survivor takes over a
dead replica's share within a few seconds. Health state is written to
the registry (lookaside_registry.health), so every replica's lists agree.

A probe is a Check on the pool's interval with its timeout (which catches
a frozen backend), plus a Watch stream where the backend supports it, so a
backend that turns NOT_SERVING leaves the lists at once. Probes dial the
backends as balancer_server.tls.BackendTls says: plaintext, TLS or mTLS.
"""

from __future__ import annotations

import asyncio
import logging
import time

import grpc
import grpc.aio
from grpc_health.v1 import health_pb2, health_pb2_grpc

from balancer_server import metrics
from balancer_server.replicas import ReplicaSet
from balancer_server.tls import BackendTls
from lookaside_registry.asyncutil import cancel_and_wait, cancelling
from lookaside_registry.errors import Unavailable
from lookaside_registry.health import HealthStore
from lookaside_registry.machine import Outcome
from lookaside_registry.model import Backend, BackendState, PoolConfig, PoolSnapshot
from lookaside_registry.port import HealthPort
from lookaside_registry.watcher import RegistryWatcher

log = logging.getLogger("lookaside.health")

SERVING = health_pb2.HealthCheckResponse.SERVING


def unavailable_detail(details: str, tls: BackendTls) -> str:
    """A short health detail for a Check that got UNAVAILABLE, naming a TLS
    mismatch, which the status code alone hides."""
    if "andshake failed" in details:
        reason = details.split("OPENSSL_internal:", 1)[-1].split(":", 1)[0]
        return f"Check UNAVAILABLE: TLS handshake failed ({reason.strip()[:60]})"
    if "Socket closed" in details:  # the backend hung up during the handshake
        if tls.credentials is None:
            hint = "a TLS backend? give the balancer --backend-tls-ca"
        elif not tls.client_certificate:
            hint = "a backend that requires mTLS? give the balancer --backend-tls-cert"
        else:
            hint = "is the balancer's client certificate one the backend trusts?"
        return f"Check UNAVAILABLE: connection closed ({hint})"
    return "Check UNAVAILABLE"


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
                health_pb2.HealthCheckRequest(service=self.config.health_checks.service),
                timeout=self.config.health_checks.timeout_ms / 1000,
            )
        except grpc.aio.AioRpcError as exc:
            if exc.code() is grpc.StatusCode.UNAVAILABLE:
                return False, unavailable_detail(exc.details() or "", self.checker.tls)
            return False, f"Check {exc.code().name}"
        if reply.status != SERVING:
            return False, f"Check {health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)}"
        return True, "Check SERVING"

    async def _watch(self, stub: health_pb2_grpc.HealthStub) -> None:
        while not cancelling():
            try:
                call = stub.Watch(
                    health_pb2.HealthCheckRequest(service=self.config.health_checks.service)
                )
                async for reply in call:
                    self._watch_status = reply.status
                    self._kick.set()
            except grpc.aio.AioRpcError as exc:
                if exc.code() is grpc.StatusCode.UNIMPLEMENTED:
                    return  # Check alone, then
            self._watch_status = None
            await asyncio.sleep(self.config.health_checks.interval_ms / 1000)

    async def _run(self) -> None:
        cfg = self.config
        channel = self.checker.tls.channel(self.address, self.pool)
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
                    fails = max(
                        fails, cfg.health_checks.unhealthy_threshold - 1
                    )  # Watch is authoritative
                if ok:
                    oks, fails = oks + 1, 0
                else:
                    fails, oks = fails + 1, 0
                metrics.HEALTH_PROBES.labels(self.pool, "ok" if ok else "fail").inc()
                state = self.checker.state_of(self.pool, self.backend.id)
                if (
                    not ok
                    and fails >= cfg.health_checks.unhealthy_threshold
                    and state is BackendState.SERVING
                ):
                    await self.checker.write(self.pool, self.backend.id, False, detail)
                elif (
                    ok
                    and oks >= cfg.health_checks.healthy_threshold
                    and (
                        state is BackendState.UNHEALTHY
                        or self.checker.held_for_health(self.pool, self.backend.id)
                    )
                ):
                    await self.checker.write(self.pool, self.backend.id, True, detail)
                self._kick.clear()
                try:
                    await asyncio.wait_for(self._kick.wait(), cfg.health_checks.interval_ms / 1000)
                except TimeoutError:
                    pass
        finally:
            watch.cancel()
            await channel.close()


class HealthChecker:
    def __init__(
        self,
        store: HealthPort,
        watcher: RegistryWatcher,
        replicas: ReplicaSet,
        *,
        max_share: float = 0.5,
        tls: BackendTls | None = None,
    ) -> None:
        self.store = store
        self.tls = tls or BackendTls()
        self.health = HealthStore(store)
        self.watcher = watcher
        self.replicas = replicas
        self.replica_id = replicas.replica_id
        self.max_share = max_share
        self.probers: dict[tuple[str, str], Prober] = {}
        self._warned: dict[tuple[str, str], float] = {}

    def start(self) -> None:
        self.watcher.hooks.append(self._on_change)
        self.replicas.hooks.append(self.reconcile_all)

    async def stop(self) -> None:
        await cancel_and_wait([p.task for p in self.probers.values()])
        self.probers.clear()

    def state_of(self, pool: str, backend_id: str) -> BackendState | None:
        snap = self.watcher.get(pool)
        if snap is None:
            return None
        for b in snap.backends:
            if b.id == backend_id:
                return b.state
        return None

    def held_for_health(self, pool: str, backend_id: str) -> bool:
        """Whether the panic guard holds a health failure of the backend (a
        passed check then ends the hold)."""
        snap = self.watcher.get(pool)
        return snap is not None and any(
            b.id == backend_id and b.held and b.guard_for == "health_fail" for b in snap.backends
        )

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
        except Unavailable as exc:
            log.warning("health pool=%s backend=%s: cannot write state (%s)", pool, backend_id, exc)
            return
        if result is Outcome.CHANGED:
            log.info(
                "health pool=%s backend=%s -> %s (%s)",
                pool,
                backend_id,
                "serving" if healthy else "unhealthy",
                detail,
            )
        elif result is Outcome.HELD:
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

    def _on_change(self, pool: str, snapshot: PoolSnapshot | None) -> None:
        self.reconcile(pool, snapshot)

    def reconcile_all(self) -> None:
        pools = set(self.watcher.snapshots) | {p for p, _ in self.probers}
        for pool in pools:
            self.reconcile(pool, self.watcher.get(pool))

    def reconcile(self, pool: str, snapshot: PoolSnapshot | None) -> None:
        wanted: dict[str, Backend] = {}
        if snapshot is not None and snapshot.config.health_checks.enabled:
            for b in snapshot.backends:
                if b.state in (
                    BackendState.SERVING,
                    BackendState.UNHEALTHY,
                    BackendState.EJECTED,
                ) and self.replicas.owns(b.id):
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
