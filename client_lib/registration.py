"""The helper with which a backend registers itself in a pool.

    meter = LoadMeter()                      # optional: measures the server's calls
    server = grpc.server(..., interceptors=[meter.interceptor()])
    with Registration("balancer:50051", pool="routeguide", port=8081, meter=meter):
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
from lookaside.proto.registry.v1 import registry_pb2 as pb
from lookaside.proto.registry.v1 import registry_pb2_grpc as pb_grpc

log = logging.getLogger("lookaside.registration")

__all__ = ["AsyncRegistration", "Registration", "RegistrationRefused"]


class _Base:
    """What both drivers share: arguments, the keeper, channel options."""

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
        self._thread: threading.Thread | None = None

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
        while not self.keeper.leased and self._do(self.keeper.next_step()):
            pass
        if self.keeper.leased:
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
        """Leaves every list but keeps the lease; waits until clients have
        had time to get the new list and in-flight calls (as counted by the
        meter) have ended, at most drain_timeout."""
        if not self.lease_id:
            return
        try:
            self._call("Drain", self._lease_request(pb.DrainRequest))
        except grpc.RpcError as exc:
            log.warning("pool=%s: drain failed (%s); deregistering", self.spec.pool, exc.details())
            return
        self._drain_log()
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
        if self.lease_id:
            try:
                self._call("Deregister", self._lease_request(pb.DeregisterRequest))
                log.info("deregistered pool=%s backend=%s", self.spec.pool, self.backend_id)
            except grpc.RpcError as exc:
                log.warning("pool=%s: deregistration failed: %s", self.spec.pool, exc.details())
        if self._channel is not None:
            self._channel.close()

    def __enter__(self) -> Registration:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class AsyncRegistration(_Base):
    """Registration on asyncio: `async with AsyncRegistration(...)`."""

    def __init__(self, *args: Any, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self._channel: grpc.aio.Channel | None = None
        self._stub: pb_grpc.RegistryStub | None = None
        self._task: asyncio.Task[None] | None = None
        self._stopped = asyncio.Event()

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
        if step.delay:
            try:
                await asyncio.wait_for(self._stopped.wait(), step.delay)
                return False
            except TimeoutError:
                pass
        if self._stopped.is_set():
            return False
        try:
            method = getattr(await self._stub_for(step.address), step.method)
            response = await method(
                step.request(), timeout=RPC_TIMEOUT, metadata=self.spec.call_metadata()
            )
        except grpc.aio.AioRpcError as exc:
            self.keeper.failed(exc.code(), exc.details() or "")
            return True
        self.keeper.succeeded(response)
        return True

    async def start(self) -> AsyncRegistration:
        """Registers (waiting for a balancer as long as it takes, or until
        stop()), then keeps the lease in a task."""
        while not self.keeper.leased and await self._do(self.keeper.next_step()):
            pass
        if self.keeper.leased:
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
        if not self.lease_id:
            return
        try:
            await self._call("Drain", self._lease_request(pb.DrainRequest))
        except grpc.aio.AioRpcError as exc:
            log.warning("pool=%s: drain failed (%s); deregistering", self.spec.pool, exc.details())
            return
        self._drain_log()
        await asyncio.sleep(self.spec.drain_delay)
        deadline = time.monotonic() + self.spec.drain_timeout
        while self.spec.in_flight() > 0 and time.monotonic() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(0.02)

    async def stop(self, drain: bool = True) -> None:
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

    async def __aenter__(self) -> AsyncRegistration:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()
