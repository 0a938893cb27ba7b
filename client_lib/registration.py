"""The helper with which a backend registers itself in a pool.

    meter = LoadMeter()                      # optional: measures the server's calls
    server = grpc.server(..., interceptors=[meter.interceptor()])
    with Registration("balancer:50051", pool="routeguide", port=8081, meter=meter):
        server.wait_for_termination()

It registers (refusals raise at once, with the balancer's message), keeps
the lease alive in the background (each heartbeat carries the meter's
load figures), registers again if the lease was lost (for example after a
Redis outage), and on exit shuts down gracefully: it drains (the backend
leaves every list but keeps its lease), waits for in-flight calls to end,
then deregisters. Stop the server only after that. Several balancer
addresses may be given; a failed call moves to the next one.
AsyncRegistration does the same on asyncio.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import grpc
import grpc.aio

from client_lib.load import LoadMeter
from lookaside.proto.registry.v1 import registry_pb2 as pb
from lookaside.proto.registry.v1 import registry_pb2_grpc as pb_grpc

log = logging.getLogger("lookaside.registration")

LoadFn = Callable[[], dict[str, float]]
RPC_TIMEOUT = 5.0
# Refusals that retrying cannot fix.
_FATAL = {
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.PERMISSION_DENIED,
    grpc.StatusCode.UNAUTHENTICATED,
}


@dataclass
class _Spec:
    balancers: list[str]
    pool: str
    port: int
    host: str = ""
    weight: int = 1
    zone: str = ""
    metadata: dict[str, str] = field(default_factory=dict)
    lease_ttl: float | None = None
    load: LoadFn | None = None
    meter: LoadMeter | None = None
    drain_delay: float = 0.5
    drain_timeout: float = 10.0

    def register_request(self) -> pb.RegisterRequest:
        req = pb.RegisterRequest(
            pool=self.pool,
            host=self.host,
            port=self.port,
            weight=self.weight,
            zone=self.zone,
            metadata=self.metadata,
        )
        if self.lease_ttl is not None:
            req.lease_ttl.FromMilliseconds(int(self.lease_ttl * 1000))
        return req

    def heartbeat_request(self, backend_id: str, lease_id: str) -> pb.HeartbeatRequest:
        req = pb.HeartbeatRequest(pool=self.pool, backend_id=backend_id, lease_id=lease_id)
        source = self.load or (self.meter.snapshot if self.meter else None)
        if source is not None:
            try:
                figures = source()
                req.load.CopyFrom(
                    pb.BackendLoad(
                        utilization=float(figures.get("utilization", -1.0)),
                        in_flight=int(figures.get("in_flight", 0)),
                        qps=float(figures.get("qps", 0.0)),
                        latency_ms=float(figures.get("latency_ms", 0.0)),
                    )
                )
            except Exception:  # noqa: BLE001 - a broken load figure must not lose the lease
                log.exception("pool=%s: load figures failed; heartbeat sent without", self.pool)
        return req

    def drain_request(self, backend_id: str, lease_id: str) -> pb.DrainRequest:
        return pb.DrainRequest(pool=self.pool, backend_id=backend_id, lease_id=lease_id)

    def deregister_request(self, backend_id: str, lease_id: str) -> pb.DeregisterRequest:
        return pb.DeregisterRequest(pool=self.pool, backend_id=backend_id, lease_id=lease_id)

    def in_flight(self) -> int:
        return self.meter.in_flight if self.meter else 0


def _spec(balancers: str | Sequence[str], pool: str, port: int, **kw: Any) -> _Spec:
    addrs = [balancers] if isinstance(balancers, str) else list(balancers)
    if not addrs:
        raise ValueError("at least one balancer address is needed")
    return _Spec(addrs, pool, port, **kw)


class Registration:
    def __init__(
        self,
        balancers: str | Sequence[str],
        pool: str,
        port: int,
        *,
        host: str = "",
        weight: int = 1,
        zone: str = "",
        metadata: dict[str, str] | None = None,
        lease_ttl: float | None = None,
        load: LoadFn | None = None,
        meter: LoadMeter | None = None,
        drain_delay: float = 0.5,
        drain_timeout: float = 10.0,
        credentials: grpc.ChannelCredentials | None = None,
    ) -> None:
        self.spec = _spec(
            balancers, pool, port, host=host, weight=weight, zone=zone,
            metadata=dict(metadata or {}), lease_ttl=lease_ttl, load=load, meter=meter,
            drain_delay=drain_delay, drain_timeout=drain_timeout,
        )  # fmt: skip
        self._credentials = credentials
        self._index = 0
        self._channel: grpc.Channel | None = None
        self._stub: pb_grpc.RegistryStub | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.backend_id = ""
        self.lease_id = ""
        self.address = ""
        self.interval = 1.0
        self.registrations = 0

    def _connect(self, advance: bool = False) -> pb_grpc.RegistryStub:
        if advance or self._stub is None:
            if self._channel is not None:
                self._channel.close()
            if advance:
                self._index += 1
            addr = self.spec.balancers[self._index % len(self.spec.balancers)]
            self._channel = (
                grpc.secure_channel(addr, self._credentials)
                if self._credentials
                else grpc.insecure_channel(addr)
            )
            self._stub = pb_grpc.RegistryStub(self._channel)
        return self._stub

    def _register(self) -> None:
        last: grpc.RpcError | None = None
        for attempt in range(len(self.spec.balancers)):
            try:
                stub = self._connect(advance=attempt > 0)
                resp = stub.Register(self.spec.register_request(), timeout=RPC_TIMEOUT)
                break
            except grpc.RpcError as exc:
                if exc.code() in _FATAL:
                    raise
                last = exc
        else:
            assert last is not None
            raise last
        self.backend_id, self.lease_id, self.address = resp.backend_id, resp.lease_id, resp.address
        self.interval = max(resp.heartbeat_interval.ToMilliseconds() / 1000, 0.1)
        self.registrations += 1
        log.info(
            "registered pool=%s backend=%s address=%s",
            self.spec.pool,
            self.backend_id,
            self.address,
        )

    def start(self) -> Registration:
        self._register()
        self._thread = threading.Thread(
            target=self._heartbeats, name=f"lookaside-lease-{self.spec.pool}", daemon=True
        )
        self._thread.start()
        return self

    def _heartbeats(self) -> None:
        delay = self.interval
        while not self._stop.wait(delay):
            delay = self.interval
            try:
                request = self.spec.heartbeat_request(self.backend_id, self.lease_id)
                self._connect().Heartbeat(request, timeout=RPC_TIMEOUT)
            except grpc.RpcError as exc:
                if self._stop.is_set():
                    return
                if exc.code() is grpc.StatusCode.NOT_FOUND:
                    log.warning(
                        "pool=%s: lease lost (%s); registering again", self.spec.pool, exc.details()
                    )
                    try:
                        self._register()
                    except grpc.RpcError as again:
                        log.warning(
                            "pool=%s: registering again failed: %s", self.spec.pool, again.details()
                        )
                        delay = min(self.interval, 1.0)
                else:
                    log.warning(
                        "pool=%s: heartbeat failed (%s); trying the next balancer",
                        self.spec.pool,
                        exc.code().name,
                    )
                    self._connect(advance=True)
                    delay = min(self.interval / 2, 1.0)

    def drain(self) -> None:
        """Leaves every list but keeps the lease; waits until clients have
        had time to get the new list and in-flight calls (as counted by the
        meter) have ended, at most drain_timeout."""
        if not self.backend_id:
            return
        try:
            self._connect().Drain(
                self.spec.drain_request(self.backend_id, self.lease_id), timeout=RPC_TIMEOUT
            )
        except grpc.RpcError as exc:
            log.warning(
                "pool=%s: drain failed (%s); deregistering at once", self.spec.pool, exc.details()
            )
            return
        log.info("draining pool=%s backend=%s", self.spec.pool, self.backend_id)
        time.sleep(self.spec.drain_delay)
        deadline = time.monotonic() + self.spec.drain_timeout
        while self.spec.in_flight() > 0 and time.monotonic() < deadline:
            time.sleep(0.02)

    def stop(self, drain: bool = True) -> None:
        """Drains (unless drain=False), stops heartbeats, and deregisters."""
        if drain:
            self.drain()
        self._stop.set()
        if self._thread is not None:
            self._thread.join(RPC_TIMEOUT + 1)
        if self.backend_id:
            try:
                self._connect().Deregister(
                    self.spec.deregister_request(self.backend_id, self.lease_id),
                    timeout=RPC_TIMEOUT,
                )
                log.info("deregistered pool=%s backend=%s", self.spec.pool, self.backend_id)
            except grpc.RpcError as exc:
                log.warning("pool=%s: deregistration failed: %s", self.spec.pool, exc.details())
        if self._channel is not None:
            self._channel.close()

    def __enter__(self) -> Registration:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class AsyncRegistration:
    """Registration on asyncio: `async with AsyncRegistration(...)`."""

    def __init__(
        self,
        balancers: str | Sequence[str],
        pool: str,
        port: int,
        *,
        host: str = "",
        weight: int = 1,
        zone: str = "",
        metadata: dict[str, str] | None = None,
        lease_ttl: float | None = None,
        load: LoadFn | None = None,
        meter: LoadMeter | None = None,
        drain_delay: float = 0.5,
        drain_timeout: float = 10.0,
        credentials: grpc.ChannelCredentials | None = None,
    ) -> None:
        self.spec = _spec(
            balancers, pool, port, host=host, weight=weight, zone=zone,
            metadata=dict(metadata or {}), lease_ttl=lease_ttl, load=load, meter=meter,
            drain_delay=drain_delay, drain_timeout=drain_timeout,
        )  # fmt: skip
        self._credentials = credentials
        self._index = 0
        self._channel: grpc.aio.Channel | None = None
        self._stub: pb_grpc.RegistryStub | None = None
        self._task: asyncio.Task[None] | None = None
        self.backend_id = ""
        self.lease_id = ""
        self.address = ""
        self.interval = 1.0
        self.registrations = 0

    async def _connect(self, advance: bool = False) -> pb_grpc.RegistryStub:
        if advance or self._stub is None:
            if self._channel is not None:
                await self._channel.close()
            if advance:
                self._index += 1
            addr = self.spec.balancers[self._index % len(self.spec.balancers)]
            self._channel = (
                grpc.aio.secure_channel(addr, self._credentials)
                if self._credentials
                else grpc.aio.insecure_channel(addr)
            )
            self._stub = pb_grpc.RegistryStub(self._channel)
        return self._stub

    async def _register(self) -> None:
        last: grpc.aio.AioRpcError | None = None
        for attempt in range(len(self.spec.balancers)):
            try:
                stub = await self._connect(advance=attempt > 0)
                resp = await stub.Register(self.spec.register_request(), timeout=RPC_TIMEOUT)
                break
            except grpc.aio.AioRpcError as exc:
                if exc.code() in _FATAL:
                    raise
                last = exc
        else:
            assert last is not None
            raise last
        self.backend_id, self.lease_id, self.address = resp.backend_id, resp.lease_id, resp.address
        self.interval = max(resp.heartbeat_interval.ToMilliseconds() / 1000, 0.1)
        self.registrations += 1
        log.info(
            "registered pool=%s backend=%s address=%s",
            self.spec.pool,
            self.backend_id,
            self.address,
        )

    async def start(self) -> AsyncRegistration:
        await self._register()
        self._task = asyncio.create_task(self._heartbeats())
        return self

    async def _heartbeats(self) -> None:
        delay = self.interval
        while True:
            await asyncio.sleep(delay)
            delay = self.interval
            try:
                stub = await self._connect()
                request = self.spec.heartbeat_request(self.backend_id, self.lease_id)
                await stub.Heartbeat(request, timeout=RPC_TIMEOUT)
            except grpc.aio.AioRpcError as exc:
                if exc.code() is grpc.StatusCode.NOT_FOUND:
                    log.warning(
                        "pool=%s: lease lost (%s); registering again", self.spec.pool, exc.details()
                    )
                    try:
                        await self._register()
                    except grpc.aio.AioRpcError as again:
                        log.warning(
                            "pool=%s: registering again failed: %s", self.spec.pool, again.details()
                        )
                        delay = min(self.interval, 1.0)
                else:
                    log.warning(
                        "pool=%s: heartbeat failed (%s); trying the next balancer",
                        self.spec.pool,
                        exc.code().name,
                    )
                    await self._connect(advance=True)
                    delay = min(self.interval / 2, 1.0)

    async def drain(self) -> None:
        """As Registration.drain, on asyncio."""
        if not self.backend_id:
            return
        try:
            stub = await self._connect()
            await stub.Drain(
                self.spec.drain_request(self.backend_id, self.lease_id), timeout=RPC_TIMEOUT
            )
        except grpc.aio.AioRpcError as exc:
            log.warning(
                "pool=%s: drain failed (%s); deregistering at once", self.spec.pool, exc.details()
            )
            return
        log.info("draining pool=%s backend=%s", self.spec.pool, self.backend_id)
        await asyncio.sleep(self.spec.drain_delay)
        deadline = time.monotonic() + self.spec.drain_timeout
        while self.spec.in_flight() > 0 and time.monotonic() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(0.02)

    async def stop(self, drain: bool = True) -> None:
        if drain:
            await self.drain()
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        if self.backend_id:
            try:
                stub = await self._connect()
                await stub.Deregister(
                    self.spec.deregister_request(self.backend_id, self.lease_id),
                    timeout=RPC_TIMEOUT,
                )
                log.info("deregistered pool=%s backend=%s", self.spec.pool, self.backend_id)
            except grpc.aio.AioRpcError as exc:
                log.warning("pool=%s: deregistration failed: %s", self.spec.pool, exc.details())
        if self._channel is not None:
            await self._channel.close()

    async def __aenter__(self) -> AsyncRegistration:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()
