"""LookasideChannel: a grpc.Channel that balances every call over the list
that a Lookaside (or any grpclb) balancer sends.

    channel = LookasideChannel("routeguide", "balancer:50051")
    stub = RouteGuideStub(channel)        # generated stubs work unchanged

It keeps one sub-channel per backend, picks round robin per call (drop
entries included: a drop fails the call with UNAVAILABLE), sends each
backend its lb-token, and reports ClientStats at the interval the balancer
asked for. When the balancer stream breaks it keeps the last list and
reconnects with backoff.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from typing import Any

import grpc

from client_lib import calls
from client_lib._sync_link import SyncBalancerLink
from client_lib.picker import CallCounters, FailedCall, Pick, Picker
from client_lib.server_list import SubChannel, parse_server_list, rebuild
from lookaside.proto.lb.v1 import load_balancer_pb2 as lb

log = logging.getLogger("lookaside.client")

ChannelOptions = Sequence[tuple[str, Any]]


class LookasideChannel(grpc.Channel):
    def __init__(
        self,
        target: str,
        balancers: str | Sequence[str],
        *,
        options: ChannelOptions = (),
        credentials: grpc.ChannelCredentials | None = None,
        balancer_credentials: grpc.ChannelCredentials | None = None,
        initial_list_timeout: float = 10.0,
        retire_grace: float = 30.0,
    ) -> None:
        """target: the service name sent to the balancer (a pool name, or a
        host[:port] that maps to one). balancers: one "host:port" or several
        (replicas, tried in turn)."""
        self.target = target
        self._balancers = [balancers] if isinstance(balancers, str) else list(balancers)
        if not self._balancers:
            raise ValueError("at least one balancer address is needed")
        self._options = list(options)
        self._credentials = credentials
        self._balancer_credentials = balancer_credentials
        self._initial_list_timeout = initial_list_timeout
        self._retire_grace = retire_grace
        self._lock = threading.Lock()
        self._subchannels: dict[str, SubChannel] = {}
        self._picker: Picker | None = None
        self._list_bytes = b""
        self._have_list = threading.Event()
        self._closed = False
        self._connectivity_callbacks: list[Callable[[grpc.ChannelConnectivity], None]] = []
        self.counters = CallCounters()
        self.lists_received = 0
        self.in_fallback = False
        self._link = SyncBalancerLink(
            name=target,
            balancers=self._balancers,
            counters=self.counters,
            on_list=self._on_list,
            on_fallback=self._on_fallback,
            make_channel=self._make_balancer_channel,
        )
        self._link.start()

    # -- list handling -------------------------------------------------------

    def _make_balancer_channel(self, address: str) -> grpc.Channel:
        if self._balancer_credentials is not None:
            return grpc.secure_channel(address, self._balancer_credentials)
        return grpc.insecure_channel(address)

    def _new_subchannel(self, address: str) -> SubChannel:
        if self._credentials is not None:
            ch = grpc.secure_channel(address, self._credentials, options=self._options)
        else:
            ch = grpc.insecure_channel(address, options=self._options)
        return SubChannel(address, ch)

    def _on_list(self, server_list: lb.ServerList, raw: bytes) -> None:
        if raw == self._list_bytes:
            return  # identical to the current list: nothing to do
        entries = parse_server_list(server_list)
        if not entries:
            log.warning(
                "target=%s: balancer sent an empty list; keeping the current one", self.target
            )
            return
        with self._lock:
            if self._closed:
                return
            new, picks, retired = rebuild(entries, self._subchannels, self._new_subchannel)
            self._subchannels = new
            self._picker = Picker(picks)
            self._list_bytes = raw
            self.lists_received += 1
            self.in_fallback = False
        if retired:
            timer = threading.Timer(self._retire_grace, self._close_subchannels, (retired,))
            timer.daemon = True
            timer.start()
        if not self._have_list.is_set():
            self._have_list.set()
            for cb in list(self._connectivity_callbacks):
                cb(grpc.ChannelConnectivity.READY)
        log.debug("target=%s: new list of %d entries", self.target, len(picks))

    def _on_fallback(self) -> None:
        self.in_fallback = True
        log.warning(
            "target=%s: balancer asked for fallback; this channel has no fallback "
            "addresses, so it keeps its current list",
            self.target,
        )

    @staticmethod
    def _close_subchannels(subs: list[SubChannel]) -> None:
        for s in subs:
            s.channel.close()

    # -- picking -------------------------------------------------------------

    def _pick(self, timeout: float | None) -> Pick:
        picker = self._picker
        if picker is None:
            wait = (
                self._initial_list_timeout
                if timeout is None
                else min(timeout, self._initial_list_timeout)
            )
            if not self._have_list.wait(wait) or self._picker is None:
                raise FailedCall(
                    grpc.StatusCode.UNAVAILABLE,
                    f"no server list from the balancer for {self.target!r} yet",
                )
            picker = self._picker
        p = picker.pick()
        if p.target is None:
            self.counters.call_dropped(p.token)
            raise FailedCall(grpc.StatusCode.UNAVAILABLE, calls.DROP_DETAILS)
        return p

    def wait_for_list(self, timeout: float | None = None) -> bool:
        """Blocks until the first server list arrived; False on timeout."""
        return self._have_list.wait(timeout)

    def backends(self) -> list[tuple[str, str]]:
        """The current list as (address, token); drops as ("", token)."""
        picker = self._picker
        return picker.describe() if picker is not None else []

    # -- grpc.Channel ----------------------------------------------------------

    def subscribe(
        self, callback: Callable[[grpc.ChannelConnectivity], None], try_to_connect: bool = False
    ) -> None:
        self._connectivity_callbacks.append(callback)
        callback(
            grpc.ChannelConnectivity.READY
            if self._have_list.is_set()
            else grpc.ChannelConnectivity.CONNECTING
        )

    def unsubscribe(self, callback: Callable[[grpc.ChannelConnectivity], None]) -> None:
        try:
            self._connectivity_callbacks.remove(callback)
        except ValueError:
            pass

    def unary_unary(
        self,
        method: str,
        request_serializer: Any = None,
        response_deserializer: Any = None,
        _registered_method: bool = False,
    ) -> grpc.UnaryUnaryMultiCallable:
        return calls.UnaryUnary(
            self, method, request_serializer, response_deserializer, _registered_method
        )

    def unary_stream(
        self,
        method: str,
        request_serializer: Any = None,
        response_deserializer: Any = None,
        _registered_method: bool = False,
    ) -> grpc.UnaryStreamMultiCallable:
        return calls.UnaryStream(
            self, method, request_serializer, response_deserializer, _registered_method
        )

    def stream_unary(
        self,
        method: str,
        request_serializer: Any = None,
        response_deserializer: Any = None,
        _registered_method: bool = False,
    ) -> grpc.StreamUnaryMultiCallable:
        return calls.StreamUnary(
            self, method, request_serializer, response_deserializer, _registered_method
        )

    def stream_stream(
        self,
        method: str,
        request_serializer: Any = None,
        response_deserializer: Any = None,
        _registered_method: bool = False,
    ) -> grpc.StreamStreamMultiCallable:
        return calls.StreamStream(
            self, method, request_serializer, response_deserializer, _registered_method
        )

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            subs = list(self._subchannels.values())
            self._subchannels = {}
        self._link.stop()
        self._close_subchannels(subs)
        self._link.join(5)

    def __enter__(self) -> LookasideChannel:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            if not self._closed:
                self.close()
        except Exception:  # noqa: BLE001 - interpreter shutdown
            pass
