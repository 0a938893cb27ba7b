"""`lookaside admin`: the admin API and dashboard under uvicorn until
SIGINT or SIGTERM."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import signal
import sys
from collections.abc import Iterator
from typing import Any

import uvicorn

from admin_api.app import create_app
from admin_api.connections import ConnectionLimits, uvicorn_options
from admin_api.settings import AdminSettings
from server_common.state_keeper import keeper_from_file

log = logging.getLogger("lookaside.admin")


class _Server(uvicorn.Server):
    """uvicorn, minus its own signal handling: serve() owns the signals, so
    a SIGTERM ends the coroutine cleanly instead of being re-raised."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def build_server(settings: AdminSettings) -> uvicorn.Server:
    host, port = settings.host_port
    config = uvicorn.Config(
        create_app(settings),
        host=host,
        port=port,
        log_config=None,
        log_level=settings.log_level,
        access_log=False,
        lifespan="on",
        server_header=False,
        ssl_certfile=settings.tls_cert or None,
        ssl_keyfile=settings.tls_key or None,
        **uvicorn_options(
            ConnectionLimits(
                header_timeout=settings.header_timeout,
                body_timeout=settings.body_timeout,
                max_connections=settings.max_connections,
                max_connections_per_address=settings.max_connections_per_address,
            ),
            settings.keep_alive_timeout,
        ),
    )
    return _Server(config)


async def serve(settings: AdminSettings) -> None:
    """Runs the admin process until SIGINT or SIGTERM."""
    server = build_server(settings)
    if settings.token_generated:
        # Printed, not only logged: dev mode's token is needed to use the API.
        print(
            f"lookaside admin: dev mode, generated token: {settings.token}",
            file=sys.stderr,
            flush=True,
        )
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, functools.partial(_stop, server, sig))
    log.info(
        "admin listening on %s://%s redis=%s public_reads=%s dev=%s",
        "https" if settings.tls_cert else "http",
        settings.listen,
        _redacted(settings.redis_url),
        settings.public_reads,
        settings.dev,
    )
    app: Any = server.config.app
    keeper = keeper_from_file(app.state.store, settings.state_file, "state:admin")
    try:
        await server.serve()
    finally:
        if keeper is not None:
            await keeper.stop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
    if not server.started:
        raise SystemExit(f"lookaside admin: could not start on {settings.listen}")
    log.info("admin stopped")


def _stop(server: uvicorn.Server, sig: signal.Signals) -> None:
    log.info("admin shutting down signal=%s", sig.name)
    if server.should_exit:
        server.force_exit = True
    server.should_exit = True


def _redacted(url: str) -> str:
    """The Redis URL without its password, for logs."""
    scheme, sep, rest = url.partition("://")
    creds, at, host = rest.rpartition("@")
    if not at:
        return url
    user = creds.split(":", 1)[0]
    return f"{scheme}{sep}{user}:***@{host}"
