"""The helper with which a backend registers itself in a pool.

    meter = LoadMeter()                      # optional: measures the server's calls
    server = grpc.server(..., interceptors=[meter.interceptor()])
    port = server.add_insecure_port("[::]:8081")
    server.start()
    with Registration("balancer:50051", pool="routeguide", port=port, meter=meter,
                      server=server):
        server.wait_for_termination()

It registers (retrying with backoff while no balancer answers; a refusal
that retrying cannot fix raises RegistrationRefused), keeps the lease alive
in the background (each heartbeat carries the meter's load figures),
registers again if the lease was lost, and on exit shuts down gracefully:
it drains (the backend leaves every list but keeps its lease), waits for
in-flight calls to end, then deregisters. Several balancer addresses may
be given. `token=` is sent as `authorization: Bearer <token>` on every
call. AsyncRegistration does the same on asyncio. Both drive one
LeaseKeeper (client_lib.lease), which decides what to call and when.

Given `server=`, the helper owns that server's health and stop (see
client_lib.serving): it adds grpc.health.v1 to it (SERVING from start(),
NOT_SERVING for good once draining starts), stops it last, and by default
(in the main thread) takes SIGTERM and SIGINT to run that graceful stop:
health NOT_SERVING and Drain, wait drain_delay and for in-flight calls (at
most drain_timeout), Deregister, then stop the server with drain_timeout as
its grace. This is the order a Kubernetes pod stops in; keep the pod's
terminationGracePeriodSeconds above drain_delay + 2 x drain_timeout.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Sequence
from typing import Any

import grpc
import grpc.aio

from client_lib.lease import (
    RPC_TIMEOUT,
    LeaseKeeper,
    LoadFn,
    RegistrationRefused,
    Step,
    lease_spec,
)
from client_lib.load import LoadMeter
from client_lib.serving import SERVING, StopSignals, add_health, wants_signals
from lookaside_proto.registry.v1 import registry_pb2 as pb
from lookaside_proto.registry.v1 import registry_pb2_grpc as pb_grpc

log = logging.getLogger("lookaside.registration")

__all__ = ["AsyncRegistration", "Registration", "RegistrationRefused"]


class _Base:
    """What both drivers share: arguments, the keeper, channel options, the
    server and its health."""

    _aio = False

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
        token: str = "",
        credentials: grpc.ChannelCredentials | None = None,
        server_name_override: str | None = None,
        server: Any = None,
        health: Any = None,
        handle_signals: bool | None = None,
    ) -> None:
        self.spec = lease_spec(
            balancers, pool, port, host=host, weight=weight, zone=zone,
            metadata=dict(metadata or {}), lease_ttl=lease_ttl, load=load, meter=meter,
            drain_delay=drain_delay, drain_timeout=drain_timeout, token=token,
        )  # fmt: skip
        self.keeper = LeaseKeeper(self.spec)
        self._credentials = credentials
        self._options = (
            [("grpc.ssl_target_name_override", server_name_override)]
            if server_name_override
            else []
        )
        self._address = ""
        self.server = server
        # grpc_health.v1 HealthServicer (its aio twin for AsyncRegistration).
        self.health = add_health(server, health, self._aio)
        self._handle_signals = wants_signals(handle_signals, server)
        self._signals: StopSignals | None = None
        self._stopped_all = False

    @property
    def backend_id(self) -> str:
        return self.keeper.backend_id

    @property
    def lease_id(self) -> str:
        return self.keeper.lease_id

    @property
    def address(self) -> str:
        return self.keeper.address

    @property
    def registrations(self) -> int:
        return self.keeper.registrations

    def _lease_request(self, kind: type) -> Any:
        return kind(pool=self.spec.pool, backend_id=self.backend_id, lease_id=self.lease_id)

    def _drain_log(self) -> None:
        log.info("draining pool=%s backend=%s", self.spec.pool, self.backend_id)


class Registration(_Base):
    def __init__(self, *args: Any, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self._channel: grpc.Channel | None = None
        self._stub: pb_grpc.RegistryStub | None = None
        self._stop = threading.Event()
        self._hurry = threading.Event()
        self._stop_lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._stopper: threading.Thread | None = None

    def _stub_for(self, address: str) -> pb_grpc.RegistryStub:
        if self._stub is None or address != self._address:
            if self._channel is not None:
                self._channel.close()
            self._channel = (
                grpc.secure_channel(address, self._credentials, options=self._options)
                if self._credentials
                else grpc.insecure_channel(address)
            )
            self._stub, self._address = pb_grpc.RegistryStub(self._channel), address
        return self._stub

    def _do(self, step: Step) -> bool:
        """Runs one step; False when stop() came first."""
        if step.delay and self._stop.wait(step.delay):
            return False
        if self._stop.is_set():
            return False
        try:
            method = getattr(self._stub_for(step.address), step.method)
            response = method(
                step.request(), timeout=RPC_TIMEOUT, metadata=self.spec.call_metadata()
            )
        except grpc.RpcError as exc:
            if self._stop.is_set():
                return False
            self.keeper.failed(exc.code(), exc.details() or "")
            return True
        self.keeper.succeeded(response)
        return True

    def start(self) -> Registration:
        """Registers (waiting for a balancer as long as it takes, or until
        stop()), then keeps the lease in a thread."""
        if self.health is not None:
            self.health.set("", SERVING)
        if self._handle_signals and self._signals is None:
            self._signals = StopSignals(self._stop_in_background, self._stop_now)
            self._signals.install()
        try:
            while not self.keeper.leased and self._do(self.keeper.next_step()):
                pass
        except RegistrationRefused:
            if self._signals is not None:
                self._signals.restore()
            raise
        if self.keeper.leased and not self._stop.is_set():
            self._thread = threading.Thread(
                target=self._keep, name=f"lookaside-lease-{self.spec.pool}", daemon=True
            )
            self._thread.start()
        return self

    def _keep(self) -> None:
        while self._do(self.keeper.next_step()):
            pass

    def _call(self, method: str, request: Any) -> None:
        getattr(self._stub_for(self.keeper.balancer), method)(
            request, timeout=RPC_TIMEOUT, metadata=self.spec.call_metadata()
        )

    def drain(self) -> None:
        """Reports NOT_SERVING and leaves every list but keeps the lease;
        waits until clients have had time to get the new list and in-flight
        calls (as counted by the meter) have ended, at most drain_timeout."""
        if self.health is not None:
            self.health.enter_graceful_shutdown()
        if not self.lease_id:
            return
        try:
            self._call("Drain", self._lease_request(pb.DrainRequest))
        except grpc.RpcError as exc:
            log.warning("pool=%s: drain failed (%s); deregistering", self.spec.pool, exc.details())
            return
        self._drain_log()
        if self._hurry.wait(self.spec.drain_delay):
            return
        deadline = time.monotonic() + self.spec.drain_timeout
        while self.spec.in_flight() > 0 and time.monotonic() < deadline:
            if self._hurry.wait(0.02):
                return

    def stop(self, drain: bool = True) -> None:
        """Drains (unless drain=False), stops heartbeats, deregisters, and
        stops the server it was given. Runs once; a second caller waits for
        the first."""
        with self._stop_lock:
            if not self._stopped_all:
                self._stopped_all = True
                self._stop_all(drain)
        if self._signals is not None:
            self._signals.restore()

    def _stop_all(self, drain: bool) -> None:
        if drain:
            self.drain()
        self._stop.set()
        if self._thread is not None:
            self._thread.join(RPC_TIMEOUT + 1)
        if self.lease_id:
            try:
                self._call("Deregister", self._lease_request(pb.DeregisterRequest))
                log.info("deregistered pool=%s backend=%s", self.spec.pool, self.backend_id)
            except grpc.RpcError as exc:
                log.warning("pool=%s: deregistration failed: %s", self.spec.pool, exc.details())
        if self._channel is not None:
            self._channel.close()
        if self.server is not None:
            grace = 0.0 if self._hurry.is_set() else self.spec.drain_timeout
            self.server.stop(grace).wait()

    def _stop_in_background(self, signum: int) -> None:
        # A signal handler runs in the main thread, between its bytecodes:
        # the stop runs in a thread of its own so the main thread goes on
        # (server.wait_for_termination() returns once the server stopped).
        self._stopper = threading.Thread(
            target=self.stop, name=f"lookaside-stop-{self.spec.pool}", daemon=True
        )
        self._stopper.start()

    def _stop_now(self, signum: int) -> None:
        self._hurry.set()
        self._stop.set()
        if self.server is not None:
            self.server.stop(0)

    def __enter__(self) -> Registration:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class AsyncRegistration(_Base):
    """Registration on asyncio: `async with AsyncRegistration(...)`."""

    _aio = True

    def __init__(self, *args: Any, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self._channel: grpc.aio.Channel | None = None
        self._stub: pb_grpc.RegistryStub | None = None
        self._task: asyncio.Task[None] | None = None
        self._stopped = asyncio.Event()
        self._hurry = asyncio.Event()
        self._stop_lock = asyncio.Lock()
        self._stopper: asyncio.Task[None] | None = None
        self._server_stops: list[asyncio.Task[None]] = []

    async def _stub_for(self, address: str) -> pb_grpc.RegistryStub:
        if self._stub is None or address != self._address:
            if self._channel is not None:
                await self._channel.close()
            self._channel = (
                grpc.aio.secure_channel(address, self._credentials, options=self._options)
                if self._credentials
                else grpc.aio.insecure_channel(address)
            )
            self._stub, self._address = pb_grpc.RegistryStub(self._channel), address
        return self._stub

    async def _do(self, step: Step) -> bool:
        if step.delay and await _wait(self._stopped, step.delay):
            return False
        if self._stopped.is_set():
            return False
        try:
            method = getattr(await self._stub_for(step.address), step.method)
            response = await method(
                step.request(), timeout=RPC_TIMEOUT, metadata=self.spec.call_metadata()
            )
        except grpc.aio.AioRpcError as exc:
            if self._stopped.is_set():
                return False
            self.keeper.failed(exc.code(), exc.details() or "")
            return True
        self.keeper.succeeded(response)
        return True

    async def start(self) -> AsyncRegistration:
        """Registers (waiting for a balancer as long as it takes, or until
        stop()), then keeps the lease in a task."""
        if self.health is not None:
            await self.health.set("", SERVING)
        if self._handle_signals and self._signals is None:
            self._signals = StopSignals(
                self._stop_in_background, self._stop_now, asyncio.get_running_loop()
            )
            self._signals.install()
        try:
            while not self.keeper.leased and await self._do(self.keeper.next_step()):
                pass
        except RegistrationRefused:
            if self._signals is not None:
                self._signals.restore()
            raise
        if self.keeper.leased and not self._stopped.is_set():
            self._task = asyncio.create_task(self._keep())
        return self

    async def _keep(self) -> None:
        while await self._do(self.keeper.next_step()):
            pass

    async def _call(self, method: str, request: Any) -> None:
        stub = await self._stub_for(self.keeper.balancer)
        await getattr(stub, method)(
            request, timeout=RPC_TIMEOUT, metadata=self.spec.call_metadata()
        )

    async def drain(self) -> None:
        """As Registration.drain, on asyncio."""
        if self.health is not None:
            await self.health.enter_graceful_shutdown()
        if not self.lease_id:
            return
        try:
            await self._call("Drain", self._lease_request(pb.DrainRequest))
        except grpc.aio.AioRpcError as exc:
            log.warning("pool=%s: drain failed (%s); deregistering", self.spec.pool, exc.details())
            return
        self._drain_log()
        if await _wait(self._hurry, self.spec.drain_delay):
            return
        deadline = time.monotonic() + self.spec.drain_timeout
        while self.spec.in_flight() > 0 and time.monotonic() < deadline:
            if await _wait(self._hurry, 0.02):
                return

    async def stop(self, drain: bool = True) -> None:
        """As Registration.stop, on asyncio."""
        async with self._stop_lock:
            if not self._stopped_all:
                self._stopped_all = True
                await self._stop_all(drain)
        if self._signals is not None:
            self._signals.restore()

    async def _stop_all(self, drain: bool) -> None:
        if drain:
            await self.drain()
        self._stopped.set()
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        if self.lease_id:
            try:
                await self._call("Deregister", self._lease_request(pb.DeregisterRequest))
                log.info("deregistered pool=%s backend=%s", self.spec.pool, self.backend_id)
            except grpc.aio.AioRpcError as exc:
                log.warning("pool=%s: deregistration failed: %s", self.spec.pool, exc.details())
        if self._channel is not None:
            await self._channel.close()
        if self.server is not None:
            await self.server.stop(0.0 if self._hurry.is_set() else self.spec.drain_timeout)

    def _stop_in_background(self, signum: int) -> None:
        self._stopper = asyncio.get_running_loop().create_task(self.stop())

    def _stop_now(self, signum: int) -> None:
        self._hurry.set()
        self._stopped.set()
        if self.server is not None:
            self._server_stops.append(asyncio.get_running_loop().create_task(self.server.stop(0)))

    async def __aenter__(self) -> AsyncRegistration:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()


async def _wait(event: asyncio.Event, seconds: float) -> bool:
    """True when `event` is set within `seconds`."""
    try:
        await asyncio.wait_for(event.wait(), seconds)
    except TimeoutError:
        return False
    return True
