"""The sync channel's driver of the BalancerSession: BalanceLoad streams on a
daemon thread, and a timer thread for the fallback timeout.

The request iterator that grpc consumes doubles as the load report timer:
it waits on a queue with the report interval as its timeout, so nothing
else has to tick. On stop, a stream that reports sends a last report of the
calls since the previous one and half-closes (FINAL_REPORT_WAIT at most),
so that a run shorter than the interval still shows in the balancer's load.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import grpc

from client_lib._lb_proto import BALANCE_LOAD, lb
from client_lib.core import ChannelCore, Effects
from client_lib.picker import CallCounters

log = logging.getLogger("lookaside.client")

_STOP = object()
_FINAL = object()  # send the last report, then half-close
FINAL_REPORT_WAIT = 1.0  # seconds stop() gives the last report to go out


def report_request(counters: CallCounters) -> bytes | None:
    report = counters.take_report(time.time_ns())
    if report is None:
        return None
    return bytes(lb.LoadBalanceRequest(client_stats=report).SerializeToString())


class SyncBalancerLink(threading.Thread):
    """Runs the core's balancer session (under the core's one lock) and
    hands each event's Effects to `on_effects`, outside the lock."""

    def __init__(
        self,
        core: ChannelCore,
        counters: CallCounters,
        on_effects: Callable[[Effects], None],
        make_channel: Callable[[str], grpc.Channel],
    ) -> None:
        super().__init__(name=f"lookaside-balancer-{core.target}", daemon=True)
        self.core = core
        self.session = core.session
        self.counters = counters
        self.on_effects = on_effects
        self.make_channel = make_channel
        self._stop_event = threading.Event()
        self._call: Any = None
        self._queue: queue.SimpleQueue[object] | None = None
        self._interval: list[float] = [0.0]  # the current stream's report interval
        self._timer: threading.Timer | None = None

    def stop(self) -> None:
        self._stop_event.set()
        if self._timer is not None:
            self._timer.cancel()
        call = self._call
        if self._queue is not None:
            if call is not None and self._interval[0]:
                ended = threading.Event()
                call.add_done_callback(lambda _: ended.set())
                self._queue.put(_FINAL)
                ended.wait(FINAL_REPORT_WAIT)
            self._queue.put(_STOP)
        if call is not None:
            call.cancel()

    def _fallback_timer(self) -> None:
        effects, silent = self.core.fallback_timer(time.monotonic())
        if not self._stop_event.is_set():
            self.on_effects(effects)
            call = self._call
            if silent and call is not None:
                call.cancel()  # a balancer that never answers: try the next one

    def run(self) -> None:
        step = self.core.start(time.monotonic())
        self._timer = threading.Timer(self.session.fallback_timeout, self._fallback_timer)
        self._timer.daemon = True
        self._timer.start()
        while not self._stop_event.is_set():
            if step.delay and self._stop_event.wait(step.delay):
                return
            address = step.address
            error = self._run_stream(address)
            if self._stop_event.is_set():
                return
            step, effects = self.core.stream_ended(time.monotonic(), error)
            self.on_effects(effects)
            log.info(
                "target=%s: balancer stream to %s ended (%s); next %s in %.2fs",
                self.session.target,
                address,
                error or "closed",
                step.address,
                step.delay,
            )

    def _requests(self, q: queue.SimpleQueue[object], interval: list[float]) -> Iterator[bytes]:
        yield self.session.initial_request()
        while True:
            try:
                item = q.get(timeout=interval[0] or None)
            except queue.Empty:
                item = None
            if item is _STOP:
                return
            if item is _FINAL:
                report = report_request(self.counters)
                if report is not None:
                    yield report
                return
            if item is None and interval[0]:
                report = report_request(self.counters)
                if report is not None:
                    yield report

    def _run_stream(self, address: str) -> str:
        """Runs one stream to its end; returns the error ("" for a clean end)."""
        q: queue.SimpleQueue[object] = queue.SimpleQueue()
        interval = self._interval = [0.0]
        channel = self.make_channel(address)
        self._queue = q
        error = ""
        try:
            balance_load = channel.stream_stream(
                BALANCE_LOAD, response_deserializer=lb.LoadBalanceResponse.FromString
            )
            self.core.stream_opened(address)
            call = balance_load(self._requests(q, interval))
            self._call = call
            if self._stop_event.is_set():
                call.cancel()
            for response in call:
                effects = self.core.response(response, address)
                if effects.report_interval:
                    interval[0] = effects.report_interval
                    q.put(False)  # wakes the iterator to take the interval
                self.on_effects(effects)
        except grpc.RpcError as exc:
            error = f"{exc.code().name}: {exc.details()}"
            if not self._stop_event.is_set():
                log.info("target=%s: balancer %s: %s", self.session.target, address, error)
        except Exception as exc:  # noqa: BLE001 - the session must outlive any one stream
            log.exception("target=%s: balancer %s: stream failed", self.session.target, address)
            error = f"{type(exc).__name__}: {exc}"
        finally:
            q.put(_STOP)
            self._call = None
            channel.close()
        return error
