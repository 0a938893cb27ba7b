"""The asyncio LookasideChannel: a grpc.aio.Channel, so grpc.aio stubs work
unchanged. Same behaviour as the sync channel (client_lib.channel)."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from typing import Any

import grpc
import grpc.aio

from client_lib.backoff import Backoff
from client_lib.picker import DROP_DETAILS, CallCounters, Pick, Picker
from client_lib.server_list import (
    SubChannel,
    initial_request,
    parse_server_list,
    rebuild,
    report_interval_seconds,
)
from lookaside.proto.lb.v1 import load_balancer_pb2 as lb
from lookaside.proto.lb.v1 import load_balancer_pb2_grpc as lb_grpc

log = logging.getLogger("lookaside.client")


class _NoPick(Exception):
    def __init__(self, details: str) -> None:
        self.details = details


def _rpc_error(details: str) -> grpc.aio.AioRpcError:
    return grpc.aio.AioRpcError(
        grpc.StatusCode.UNAVAILABLE, grpc.aio.Metadata(), grpc.aio.Metadata(), details=details
    )


class AioFailedCall:
    """What a dropped call returns: awaiting, iterating, reading or writing
    it raises AioRpcError(UNAVAILABLE)."""

    def __init__(self, details: str) -> None:
        self._error = _rpc_error(details)

    def __await__(self) -> Any:
        raise self._error
        yield  # pragma: no cover - makes this a generator

    def __aiter__(self) -> AioFailedCall:
        return self

    async def __anext__(self) -> Any:
        raise self._error

    async def read(self) -> Any:
        raise self._error

    async def write(self, request: Any) -> None:
        raise self._error

    async def done_writing(self) -> None:
        return None

    async def code(self) -> grpc.StatusCode:
        return grpc.StatusCode.UNAVAILABLE

    async def details(self) -> str:
        return self._error.details() or ""

    async def initial_metadata(self) -> grpc.aio.Metadata:
        return grpc.aio.Metadata()

    async def trailing_metadata(self) -> grpc.aio.Metadata:
        return grpc.aio.Metadata()

    async def wait_for_connection(self) -> None:
        return None

    def cancel(self) -> bool:
        return False

    def cancelled(self) -> bool:
        return False

    def done(self) -> bool:
        return True

    def time_remaining(self) -> None:
        return None

    def add_done_callback(self, callback: Any) -> None:
        callback(self)


def _status_of(call: Any) -> tuple[Any, bool]:
    try:
        cy = call._cython_call
        status = cy._status
        md = bool(cy._initial_metadata or status.trailing_metadata())
        return status.code(), md
    except Exception:  # noqa: BLE001 - internal layout differs: count as received
        return grpc.StatusCode.OK, True


class _MultiCallable:
    __slots__ = ("_channel", "_key", "_registered")

    def __init__(
        self,
        channel: LookasideAioChannel,
        kind: str,
        method: str,
        ser: Any,
        deser: Any,
        registered: bool,
    ) -> None:
        self._channel = channel
        self._key = (kind, method, ser, deser)
        self._registered = registered

    def __call__(
        self,
        request: Any = None,
        *,
        timeout: float | None = None,
        metadata: Any = None,
        credentials: Any = None,
        wait_for_ready: bool | None = None,
        compression: Any = None,
    ) -> Any:
        ch = self._channel
        try:
            p = ch._pick()
        except _NoPick as exc:
            return AioFailedCall(exc.details)
        mc = p.target.multicallable(self._key, self._registered)
        md = p.metadata if not metadata else (*tuple(metadata), *p.metadata)
        ch.counters.call_started()
        call = mc(
            request,
            timeout=timeout,
            metadata=md or None,
            credentials=credentials,
            wait_for_ready=wait_for_ready,
            compression=compression,
        )
        counters = ch.counters
        token = p.token
        call.add_done_callback(lambda c: counters.finish_with(*_status_of(c), token))
        return call


class LookasideAioChannel(grpc.aio.Channel):
    """Create it inside a running event loop; `await channel.channel_ready()`
    waits for the first server list. A call made before any list arrived
    fails with UNAVAILABLE."""

    def __init__(
        self,
        target: str,
        balancers: str | Sequence[str],
        *,
        options: Sequence[tuple[str, Any]] = (),
        credentials: grpc.ChannelCredentials | None = None,
        balancer_credentials: grpc.ChannelCredentials | None = None,
        retire_grace: float = 30.0,
    ) -> None:
        self.target = target
        self._balancers = [balancers] if isinstance(balancers, str) else list(balancers)
        if not self._balancers:
            raise ValueError("at least one balancer address is needed")
        self._options = list(options)
        self._credentials = credentials
        self._balancer_credentials = balancer_credentials
        self._retire_grace = retire_grace
        self._subchannels: dict[str, SubChannel] = {}
        self._picker: Picker | None = None
        self._list_bytes = b""
        self._have_list = asyncio.Event()
        self._closed = False
        self.counters = CallCounters()
        self.lists_received = 0
        self.in_fallback = False
        self._backoff = Backoff()
        self._task = asyncio.get_running_loop().create_task(
            self._run(), name=f"lookaside-balancer-{target}"
        )

    # -- balancer stream -----------------------------------------------------

    def _balancer_channel(self, address: str) -> grpc.aio.Channel:
        if self._balancer_credentials is not None:
            return grpc.aio.secure_channel(address, self._balancer_credentials)
        return grpc.aio.insecure_channel(address)

    async def _run(self) -> None:
        i = 0
        while not self._closed:
            address = self._balancers[i % len(self._balancers)]
            i += 1
            got_list = await self._stream(address)
            if self._closed:
                return
            if got_list:
                self._backoff.reset()
                delay = 0.0 if i % len(self._balancers) else 0.1
            else:
                delay = self._backoff.next()
            log.info("balancer stream to %s ended; reconnecting in %.2fs", address, delay)
            await asyncio.sleep(delay)

    async def _stream(self, address: str) -> bool:
        channel = self._balancer_channel(address)
        got_list = False
        reporter: asyncio.Task[None] | None = None
        try:
            call = lb_grpc.LoadBalancerStub(channel).BalanceLoad()
            await call.write(initial_request(self.target))
            interval = 0.0
            while True:
                response = await call.read()
                if response is grpc.aio.EOF:
                    break
                kind = response.WhichOneof("load_balance_response_type")
                if kind == "initial_response":
                    interval = report_interval_seconds(response.initial_response)
                elif kind == "server_list":
                    self._on_list(response.server_list)
                    if not got_list:
                        got_list = True
                        if interval:
                            reporter = asyncio.create_task(self._report(call, interval))
                elif kind == "fallback_response":
                    self.in_fallback = True
                    log.warning(
                        "target=%s: balancer asked for fallback; keeping the current list",
                        self.target,
                    )
        except grpc.aio.AioRpcError as exc:
            if not self._closed:
                log.info("balancer %s: %s %s", address, exc.code().name, exc.details())
        finally:
            if reporter is not None:
                reporter.cancel()
            await channel.close()
        return got_list

    async def _report(self, call: Any, interval: float) -> None:
        while True:
            await asyncio.sleep(interval)
            report = self.counters.take_report(time.time_ns())
            if report is not None:
                await call.write(lb.LoadBalanceRequest(client_stats=report))

    def _on_list(self, server_list: lb.ServerList) -> None:
        raw = server_list.SerializeToString()
        if raw == self._list_bytes:
            return
        entries = parse_server_list(server_list)
        if not entries:
            log.warning(
                "target=%s: balancer sent an empty list; keeping the current one", self.target
            )
            return
        new, picks, retired = rebuild(entries, self._subchannels, self._new_subchannel)
        self._subchannels = new
        self._picker = Picker(picks)
        self._list_bytes = raw
        self.lists_received += 1
        self.in_fallback = False
        if retired:
            asyncio.get_running_loop().call_later(
                self._retire_grace, lambda: asyncio.ensure_future(self._close_subs(retired))
            )
        self._have_list.set()

    def _new_subchannel(self, address: str) -> SubChannel:
        ch = (
            grpc.aio.secure_channel(address, self._credentials, options=self._options)
            if self._credentials is not None
            else grpc.aio.insecure_channel(address, options=self._options)
        )
        return SubChannel(address, ch)

    @staticmethod
    async def _close_subs(subs: list[SubChannel]) -> None:
        for s in subs:
            await s.channel.close()

    def _pick(self) -> Pick:
        picker = self._picker
        if picker is None:
            raise _NoPick(f"no server list from the balancer for {self.target!r} yet")
        p = picker.pick()
        if p.target is None:
            self.counters.call_dropped(p.token)
            raise _NoPick(DROP_DETAILS)
        return p

    def backends(self) -> list[tuple[str, str]]:
        """The current list as (address, token); drops as ("", token)."""
        picker = self._picker
        return picker.describe() if picker is not None else []

    # -- grpc.aio.Channel ------------------------------------------------------

    async def __aenter__(self) -> LookasideAioChannel:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self, grace: float | None = None) -> None:
        if self._closed:
            return
        self._closed = True
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)
        subs, self._subchannels = list(self._subchannels.values()), {}
        for s in subs:
            await s.channel.close(grace)

    def get_state(self, try_to_connect: bool = False) -> grpc.ChannelConnectivity:
        return (
            grpc.ChannelConnectivity.READY
            if self._have_list.is_set()
            else grpc.ChannelConnectivity.CONNECTING
        )

    async def wait_for_state_change(self, last_observed_state: grpc.ChannelConnectivity) -> None:
        if last_observed_state != self.get_state():
            return
        await self._have_list.wait()

    async def channel_ready(self) -> None:
        await self._have_list.wait()

    def unary_unary(
        self,
        method: str,
        request_serializer: Any = None,
        response_deserializer: Any = None,
        _registered_method: bool = False,
    ) -> Any:
        return _MultiCallable(
            self,
            "unary_unary",
            method,
            request_serializer,
            response_deserializer,
            _registered_method,
        )

    def unary_stream(
        self,
        method: str,
        request_serializer: Any = None,
        response_deserializer: Any = None,
        _registered_method: bool = False,
    ) -> Any:
        return _MultiCallable(
            self,
            "unary_stream",
            method,
            request_serializer,
            response_deserializer,
            _registered_method,
        )

    def stream_unary(
        self,
        method: str,
        request_serializer: Any = None,
        response_deserializer: Any = None,
        _registered_method: bool = False,
    ) -> Any:
        return _MultiCallable(
            self,
            "stream_unary",
            method,
            request_serializer,
            response_deserializer,
            _registered_method,
        )

    def stream_stream(
        self,
        method: str,
        request_serializer: Any = None,
        response_deserializer: Any = None,
        _registered_method: bool = False,
    ) -> Any:
        return _MultiCallable(
            self,
            "stream_stream",
            method,
            request_serializer,
            response_deserializer,
            _registered_method,
        )


# The asyncio channel is also reachable as client_lib.aio.LookasideChannel.
LookasideChannel = LookasideAioChannel
