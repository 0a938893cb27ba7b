"""The asyncio LookasideChannel: a grpc.aio.Channel, so grpc.aio stubs work
unchanged. The same BalancerSession and ChannelCore as the sync channel
(client_lib.channel), driven by tasks on the running loop."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine, Sequence
from typing import Any

import grpc
import grpc.aio

from client_lib._lb_proto import BALANCE_LOAD, lb
from client_lib._sync_link import FINAL_REPORT_WAIT, report_request
from client_lib.aio_calls import AioFailedCall, MultiCallable, rpc_error
from client_lib.attempts import Picking
from client_lib.channel import LOCAL_POOL, server_name_options
from client_lib.core import IDLE, SHUTDOWN, ChannelCore, ChannelViews, Effects
from client_lib.picker import CallCounters, FailedCall, Pick
from client_lib.retry import RetryConfig
from client_lib.server_list import SubChannel
from client_lib.session import BalancerSession

log = logging.getLogger("lookaside.client")

__all__ = ["AioFailedCall", "LookasideAioChannel", "LookasideChannel"]


class LookasideAioChannel(ChannelViews, grpc.aio.Channel):
    """Create it inside a running event loop. A call made before the first
    list waits for it; `await channel.channel_ready()` waits for a READY
    backend."""

    def __init__(
        self,
        target: str,
        balancers: str | Sequence[str],
        *,
        options: Sequence[tuple[str, Any]] = (),
        credentials: grpc.ChannelCredentials | None = None,
        balancer_credentials: grpc.ChannelCredentials | None = None,
        server_name_override: str | None = None,
        fallback_targets: Sequence[str] = (),
        fallback_timeout: float = 10.0,
        retire_grace: float = 30.0,
    ) -> None:
        self._session = BalancerSession(target, balancers, fallback_timeout=fallback_timeout)
        self.retry = RetryConfig.from_options(options)
        self.target = target
        self._options = server_name_options(options, server_name_override)
        self._credentials = credentials
        self._balancer_credentials = balancer_credentials
        self._retire_grace = retire_grace
        self.counters = CallCounters()
        self._loop = asyncio.get_running_loop()
        self.loop_time = self._loop.time
        self._event = asyncio.Event()
        self._core = ChannelCore(
            self._session, self._new_subchannel, fallback_targets, self.counters
        )
        self.picking: Picking = self._core  # what calls pick with (client_lib.attempts)
        self._watchers: set[asyncio.Task[None]] = set()
        # Sub-channels retired by a new list, closed after the grace by their
        # timer or at close(); nothing of this channel outlives close().
        self._retiring: dict[asyncio.TimerHandle, list[SubChannel]] = {}
        self._tasks: set[asyncio.Task[None]] = set()  # short ones, awaited by close()
        self._call: Any = None  # the BalanceLoad stream open now
        self._reporter: asyncio.Task[None] | None = None  # its load reports
        self._task = self._loop.create_task(self._run(), name=f"lookaside-balancer-{target}")
        self._fallback = self._loop.call_later(fallback_timeout, self._fallback_timer)

    # -- the session driver --------------------------------------------------------

    def _balancer_channel(self, address: str) -> grpc.aio.Channel:
        if self._balancer_credentials is not None:
            return grpc.aio.secure_channel(
                address, self._balancer_credentials, options=self._options
            )
        return grpc.aio.insecure_channel(address, options=[LOCAL_POOL])

    async def _run(self) -> None:
        step = self._core.start(self._loop.time())
        while True:
            if step.delay:
                await asyncio.sleep(step.delay)
            error = await self._stream(step.address)
            address = step.address
            step, effects = self._core.stream_ended(self._loop.time(), error)
            self._on_effects(effects)
            log.info(
                "target=%s: balancer stream to %s ended (%s); next %s in %.2fs",
                self.target,
                address,
                error or "closed",
                step.address,
                step.delay,
            )

    async def _stream(self, address: str) -> str:
        channel = self._balancer_channel(address)
        reporter: asyncio.Task[None] | None = None
        try:
            call = self._call = channel.stream_stream(
                BALANCE_LOAD, response_deserializer=lb.LoadBalanceResponse.FromString
            )()
            self._core.stream_opened(address)
            await call.write(self._session.initial_request())
            while True:
                response = await call.read()
                if response is grpc.aio.EOF:
                    return ""
                effects = self._core.response(response, address)
                if effects.report_interval:
                    reporter = asyncio.create_task(self._report(call, effects.report_interval))
                    self._reporter = reporter
                self._on_effects(effects)
        except grpc.aio.AioRpcError as exc:
            error = f"{exc.code().name}: {exc.details()}"
            log.info("target=%s: balancer %s: %s", self.target, address, error)
            return error
        except asyncio.CancelledError:
            if self._core.closed:
                raise
            return "CANCELLED: no answer within the fallback timeout"
        except Exception as exc:  # noqa: BLE001 - the session must outlive any one stream
            log.exception("target=%s: balancer %s: stream failed", self.target, address)
            return f"{type(exc).__name__}: {exc}"
        finally:
            self._call = None
            self._reporter = None
            if reporter is not None:
                reporter.cancel()
            await channel.close()

    async def _final_report(self) -> None:
        """The calls since the last report, sent before the stream is closed
        (then a half-close), so a run shorter than the interval still shows."""
        call, reporter = self._call, self._reporter
        if call is None or reporter is None:
            return
        reporter.cancel()
        await asyncio.gather(reporter, return_exceptions=True)
        report = report_request(self.counters)
        try:
            async with asyncio.timeout(FINAL_REPORT_WAIT):
                if report is not None:
                    await call.write(report)
                await call.done_writing()
                await call.code()  # the balancer ends the stream on the half-close
        except (TimeoutError, grpc.aio.AioRpcError, asyncio.InvalidStateError):
            pass

    async def _report(self, call: Any, interval: float) -> None:
        while True:
            await asyncio.sleep(interval)
            report = report_request(self.counters)
            if report is not None:
                await call.write(report)

    def _fallback_timer(self) -> None:
        effects, silent = self._core.fallback_timer(self._loop.time())
        self._on_effects(effects)
        if silent and self._call is not None:
            self._call.cancel()  # a balancer that never answers: try the next one

    def _on_effects(self, effects: Effects) -> None:
        """Runs what an event of the core's asks for (never under its lock)."""
        if effects.changed:
            self._changed()
        for sub in effects.watch:
            task = self._loop.create_task(self._watch(sub))
            self._watchers.add(task)
            task.add_done_callback(self._watchers.discard)
            sub.watcher = task
        if effects.retire:
            batch = list(effects.retire)
            handle = self._loop.call_later(self._retire_grace, self._retire_due, batch)
            self._retiring[handle] = batch

    async def _watch(self, sub: SubChannel) -> None:
        """Follows one sub-channel's connectivity; asks an IDLE one to
        connect, as round_robin does."""
        channel = sub.channel
        state = channel.get_state(try_to_connect=True)
        while state is not SHUTDOWN:
            self._on_effects(self._core.set_state(sub, state))
            await channel.wait_for_state_change(state)
            state = channel.get_state(try_to_connect=True)
            if state is IDLE:
                state = channel.get_state(try_to_connect=True)

    def _retire_due(self, batch: list[SubChannel]) -> None:
        for handle, subs in list(self._retiring.items()):
            if subs is batch:
                del self._retiring[handle]
        self.background(self._close_subs(batch))

    def background(self, coro: Coroutine[Any, Any, None]) -> None:
        """Runs `coro` as a task of this channel's, which close() awaits."""
        task = self._loop.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    @staticmethod
    async def _close_subs(subs: list[SubChannel], grace: float | None = None) -> None:
        watchers = [s.watcher for s in subs if s.watcher is not None]
        for w in watchers:
            w.cancel()
        await asyncio.gather(*watchers, return_exceptions=True)
        await asyncio.gather(*(s.channel.close(grace) for s in subs))

    def _new_subchannel(self, address: str) -> SubChannel:
        ch = (
            grpc.aio.secure_channel(address, self._credentials, options=self._options)
            if self._credentials is not None
            else grpc.aio.insecure_channel(address, options=self._options)
        )
        return SubChannel(address, ch)

    def _changed(self) -> None:
        event, self._event = self._event, asyncio.Event()
        event.set()

    # -- the pick queue ---------------------------------------------------------------

    async def wait_for_pick(self, deadline: float | None, wait_for_ready: bool) -> Pick:
        """The pick queue: a pick once a backend is READY; AioRpcError when
        the deadline (on the loop's clock) passes or, fail-fast, the channel
        is in TRANSIENT_FAILURE. A drop is returned as it is."""
        core = self._core
        while True:
            try:
                p = core.queued_pick(wait_for_ready)
            except FailedCall as failed:
                raise rpc_error(failed) from None
            if p is not None:
                return p
            event = self._event
            if deadline is None:
                await event.wait()
                continue
            remaining = deadline - self._loop.time()
            if remaining <= 0:
                raise rpc_error(core.deadline_passed())
            try:
                await asyncio.wait_for(event.wait(), remaining)
            except TimeoutError:
                pass

    # -- grpc.aio.Channel ------------------------------------------------------

    async def __aenter__(self) -> LookasideAioChannel:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self, grace: float | None = None) -> None:
        if self._core.closed:
            return
        subs = self._core.close()
        self._changed()
        self._fallback.cancel()
        await self._final_report()
        self._task.cancel()
        for handle, retired in self._retiring.items():
            handle.cancel()
            subs += retired
        self._retiring.clear()
        await asyncio.gather(self._task, *self._tasks, return_exceptions=True)
        await self._close_subs(subs, grace)

    def get_state(self, try_to_connect: bool = False) -> grpc.ChannelConnectivity:
        return self._core.connectivity()

    async def wait_for_state_change(self, last_observed_state: grpc.ChannelConnectivity) -> None:
        while self._core.connectivity() is last_observed_state:
            await self._event.wait()

    async def channel_ready(self) -> None:
        while self.get_state() is not grpc.ChannelConnectivity.READY:
            if self._core.picker is not None and not self._core.subchannels:
                return  # a list of only drops: nothing to connect to
            await self._event.wait()

    def unary_unary(
        self,
        method: str,
        request_serializer: Any = None,
        response_deserializer: Any = None,
        _registered_method: bool = False,
    ) -> Any:
        return MultiCallable(
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
        return MultiCallable(
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
        return MultiCallable(
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
        return MultiCallable(
            self,
            "stream_stream",
            method,
            request_serializer,
            response_deserializer,
            _registered_method,
        )


# The asyncio channel is also reachable as client_lib.aio.LookasideChannel.
LookasideChannel = LookasideAioChannel
