"""The sync channel's BalanceLoad stream, run on a daemon thread.

The request iterator that grpc consumes doubles as the load report timer:
it waits on a queue with the report interval as its timeout, so nothing
else has to tick.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import grpc

from client_lib.backoff import Backoff
from client_lib.picker import CallCounters
from client_lib.server_list import initial_request, report_interval_seconds
from lookaside.proto.lb.v1 import load_balancer_pb2 as lb
from lookaside.proto.lb.v1 import load_balancer_pb2_grpc as lb_grpc

log = logging.getLogger("lookaside.client")

_STOP = object()
_WAKE = object()


class SyncBalancerLink(threading.Thread):
    def __init__(
        self,
        *,
        name: str,
        balancers: Sequence[str],
        counters: CallCounters,
        on_list: Callable[[lb.ServerList, bytes], None],
        on_fallback: Callable[[], None],
        make_channel: Callable[[str], grpc.Channel],
        backoff: Backoff | None = None,
    ) -> None:
        super().__init__(name=f"lookaside-balancer-{name}", daemon=True)
        self.service_name = name
        self.balancers = list(balancers)
        self.counters = counters
        self.on_list = on_list
        self.on_fallback = on_fallback
        self.make_channel = make_channel
        self.backoff = backoff or Backoff()
        self._stop_event = threading.Event()
        self._call: Any = None
        self._queue: queue.SimpleQueue[object] | None = None
        self.connected_to = ""
        self.streams_opened = 0

    def stop(self) -> None:
        self._stop_event.set()
        if self._queue is not None:
            self._queue.put(_STOP)
        call = self._call
        if call is not None:
            call.cancel()

    def run(self) -> None:
        i = 0
        while not self._stop_event.is_set():
            address = self.balancers[i % len(self.balancers)]
            i += 1
            got_list = self._run_stream(address)
            if self._stop_event.is_set():
                return
            if got_list:
                # A stream that delivered a list ended: reconnect at once
                # (to the next replica), as C-core does, but back off if that
                # keeps happening.
                self.backoff.reset()
                delay = 0.0 if i % len(self.balancers) else 0.1
            else:
                delay = self.backoff.next()
            log.info("balancer stream to %s ended; reconnecting in %.2fs", address, delay)
            self._stop_event.wait(delay)

    def _requests(self, q: queue.SimpleQueue[object], state: dict[str, Any]) -> Any:
        yield initial_request(self.service_name)
        while True:
            interval = state["interval"]
            try:
                item = q.get(timeout=interval if interval and state["got_list"] else None)
            except queue.Empty:
                item = None
            if item is _STOP:
                return
            if item is _WAKE:
                continue
            interval = state["interval"]
            if interval and state["got_list"]:
                report = self.counters.take_report(time.time_ns())
                if report is not None:
                    yield lb.LoadBalanceRequest(client_stats=report)

    def _run_stream(self, address: str) -> bool:
        q: queue.SimpleQueue[object] = queue.SimpleQueue()
        state: dict[str, Any] = {"interval": 0.0, "got_list": False}
        channel = self.make_channel(address)
        self._queue = q
        try:
            stub = lb_grpc.LoadBalancerStub(channel)
            call = stub.BalanceLoad(self._requests(q, state))
            self._call = call
            if self._stop_event.is_set():
                call.cancel()
            self.streams_opened += 1
            for response in call:
                kind = response.WhichOneof("load_balance_response_type")
                if kind == "initial_response":
                    state["interval"] = report_interval_seconds(response.initial_response)
                    self.connected_to = address
                elif kind == "server_list":
                    self.on_list(response.server_list, response.server_list.SerializeToString())
                    if not state["got_list"]:
                        state["got_list"] = True
                        q.put(_WAKE)
                elif kind == "fallback_response":
                    self.on_fallback()
        except grpc.RpcError as exc:
            if not self._stop_event.is_set():
                log.info("balancer %s: %s %s", address, exc.code().name, exc.details())
        finally:
            q.put(_STOP)
            self._call = None
            channel.close()
        return bool(state["got_list"])
