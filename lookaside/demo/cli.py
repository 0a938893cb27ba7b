"""`lookaside routeguide server|client`: the demo of the article "On gRPC
Load Balancing". Without a balancer every call lands on one server; through
Lookaside the calls spread over all of them.

    lookaside routeguide server --balancer 127.0.0.1:50051        # run 3 of these
    lookaside routeguide client --lb none --server 127.0.0.1:PORT -n 15
    lookaside routeguide client --lb lookaside -n 15
"""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import Callable
from typing import Any

from lookaside.cli import setup_logging
from lookaside.demo.settings import ClientSettings, ServerSettings
from server_common.settings import add_settings_arguments as add_arguments
from server_common.settings import settings_or_exit


def _server_command(parser: argparse.ArgumentParser) -> Callable[[argparse.Namespace], int]:
    def run(args: argparse.Namespace) -> int:
        settings: ServerSettings = settings_or_exit(parser, ServerSettings, args)
        setup_logging(settings.log_level)
        from lookaside.demo.server import serve

        try:
            return asyncio.run(serve(settings))
        except OSError as exc:
            parser.exit(1, f"routeguide server: {exc}\n")
        except ValueError as exc:  # a malformed features db
            parser.exit(1, f"routeguide server: {exc}\n")

    return run


def _client_command(parser: argparse.ArgumentParser) -> Callable[[argparse.Namespace], int]:
    def run(args: argparse.Namespace) -> int:
        settings: ClientSettings = settings_or_exit(parser, ClientSettings, args)
        setup_logging(settings.log_level)
        from lookaside.demo.client import run as run_client

        run_client(settings)
        return 0  # a demo: failed calls are in the summary, not the exit code

    return run


def add_subcommand(subparsers: Any) -> None:
    """Adds `routeguide` with its `server` and `client` commands."""
    p = subparsers.add_parser(
        "routeguide",
        help="the demo server and client",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = p.add_subparsers(dest="routeguide_command", required=True)
    server = sub.add_parser(
        "server",
        help="a routeguide server that registers itself and names itself in x-served-by",
        description="A routeguide server over the shipped features db, with health, "
        "reflection, injected faults and latency. With --balancer it registers in --pool, "
        "and leaves the pool on SIGTERM or Ctrl-C before it stops serving.",
    )
    add_arguments(server, ServerSettings)
    server.set_defaults(func=_server_command(server))
    client = sub.add_parser(
        "client",
        help="calls routeguide and shows which server answered each call",
        description="Calls routeguide through --lb lookaside, grpclb-dns, xds or none, prints "
        "the server that answered each call (x-served-by) and a table of calls per server. "
        "Exits 0 even when calls failed; 2 on bad arguments.",
    )
    add_arguments(client, ClientSettings, short={"n": "-n"})
    client.set_defaults(func=_client_command(client))
