"""What a registering backend serves, and how it stops: grpc.health.v1 on
the server the registration helper is given, and the stop signals.

The balancer health-checks every backend it lists (grpc.health.v1 Check on
the pool's service name, "" by default), so a backend that serves no health
service is marked unhealthy within seconds and gets no traffic. Given a
server, the helpers add grpcio-health-checking's servicer to it (or use the
one given as `health=`), report SERVING from the first registration on, and
NOT_SERVING for good once draining starts.

SIGTERM and SIGINT (Ctrl-C) start the helper's graceful stop instead of
killing the process or raising KeyboardInterrupt: drain, wait, deregister,
stop the server. A second signal cuts the waits short and stops the server
at once. The handlers that were there before come back when the stop is done
(in the main thread).
"""

from __future__ import annotations

import asyncio
import logging
import signal
import threading
from collections.abc import Callable
from typing import Any

log = logging.getLogger("lookaside.registration")

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
SERVING = 1  # grpc.health.v1.HealthCheckResponse.SERVING


def add_health(server: Any, given: Any, aio: bool) -> Any:
    """The health servicer to drive: `given`, or a new one added to `server`."""
    if given is not None or server is None:
        return given
    try:
        from grpc_health.v1 import health, health_pb2_grpc
    except ImportError:
        raise RuntimeError(
            "server= needs grpcio-health-checking to serve grpc.health.v1, which the "
            "balancer's health checks call: pip install grpcio-health-checking (the "
            "client install brings it), or serve health yourself and leave out server="
        ) from None
    servicer = health.aio.HealthServicer() if aio else health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(servicer, _GenericHandlersOnly(server))
    return servicer


class _GenericHandlersOnly:
    """A server as the generated add_*_to_server sees it, taking only the
    generic handlers: the server may have started already, and a started
    server refuses registered methods (with a warning) while its generic
    handlers serve the same methods."""

    def __init__(self, server: Any) -> None:
        self._server = server

    def add_generic_rpc_handlers(self, handlers: Any) -> None:
        self._server.add_generic_rpc_handlers(handlers)

    def add_registered_method_handlers(self, service: str, handlers: Any) -> None:
        pass


def wants_signals(handle_signals: bool | None, server: Any) -> bool:
    """Whether to take over the stop signals: by default when the helper
    owns a server's stop and runs in the main thread (only it can)."""
    main = threading.current_thread() is threading.main_thread()
    if handle_signals and not main:
        raise ValueError(
            "handle_signals=True: signal handlers can only be installed from the main "
            "thread; create the registration there, or pass handle_signals=False"
        )
    if handle_signals is None:
        return server is not None and main
    return handle_signals


class StopSignals:
    """Routes SIGTERM and SIGINT to `first` (start the graceful stop) and
    then `again` (hurry), restoring the previous handlers on `restore()`.
    On asyncio, the handlers are the loop's (add_signal_handler)."""

    def __init__(
        self,
        first: Callable[[int], None],
        again: Callable[[int], None],
        loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        self._first, self._again, self._loop = first, again, loop
        self._previous: dict[int, Any] = {}
        self.received = 0

    def install(self) -> None:
        for sig in STOP_SIGNALS:
            self._previous[sig] = signal.getsignal(sig)
            if self._loop is not None:
                self._loop.add_signal_handler(sig, self._on_signal, sig)
            else:
                signal.signal(sig, lambda signum, _frame: self._on_signal(signum))

    def _on_signal(self, signum: int) -> None:
        self.received += 1
        name = signal.Signals(signum).name
        if self.received == 1:
            log.info("%s: stopping gracefully (drain, deregister, stop)", name)
            self._first(signum)
        else:
            log.info("%s again: stopping at once", name)
            self._again(signum)

    def restore(self) -> None:
        """Puts the previous handlers back (main thread only; a no-op
        elsewhere or when already done)."""
        if threading.current_thread() is not threading.main_thread():
            return
        for sig, previous in self._previous.items():
            if self._loop is not None and not self._loop.is_closed():
                self._loop.remove_signal_handler(sig)
            signal.signal(sig, previous if previous is not None else signal.SIG_DFL)
        self._previous.clear()
