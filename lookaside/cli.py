"""The `lookaside` command.

    lookaside balancer      the grpclb balancer and registration API
    lookaside dns           the DNS SRV responder for stock gRPC clients
    lookaside admin         the admin API and dashboard
    lookaside routeguide    the demo server and client
    lookaside up            the whole local lab in one command
    lookaside certs         a local CA and TLS certificates for the lab
    lookaside ctl           operate pools and backends over the admin API
    lookaside watch         show live the server list a pool's clients get
    lookaside health-probe  exit 0 when a gRPC server is SERVING (for probes)
    lookaside chaos         faults under load, and a table of lost calls
    lookaside apply -f F    make the registry hold a declared state; `export` prints it
    lookaside xds-bootstrap the xDS bootstrap for a gRPC client on xds:///POOL

Every flag also reads an environment variable (shown in --help); ctl,
watch, export and apply also read the context that `lookaside up` writes
(lookaside.context). Bad arguments: one line on stderr, exit status 2.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import logging
import sys
import typing
from collections.abc import Callable

try:
    from lookaside.redis_process import redis_unreachable
    from server_common.settings import add_settings_arguments, redacted_url, settings_or_exit
except ModuleNotFoundError as exc:  # a client-only install (no server extra)
    raise SystemExit(
        f"lookaside: the {exc.name!r} module is missing: the lookaside command runs the "
        "server parts, which come with the extra: pip install 'lookaside-grpclb[server]'"
    ) from None


def setup_logging(level: str = "info") -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
        stream=sys.stderr,
    )


# name -> (help, "module:SettingsClass", "module:serve" coroutine taking settings)
SERVICES: dict[str, tuple[str, str, str]] = {
    "balancer": (
        "run the grpclb balancer and registration API",
        "balancer_server.settings:BalancerSettings",
        "balancer_server.workers:run",
    ),
    "dns": (
        "run the DNS SRV responder for stock gRPC clients",
        "dns_responder.settings:DnsSettings",
        "dns_responder.server:serve",
    ),
    "admin": (
        "run the admin API and dashboard",
        "admin_api.settings:AdminSettings",
        "admin_api.server:serve",
    ),
}


def _load(ref: str) -> object:
    module, _, attr = ref.partition(":")
    return getattr(importlib.import_module(module), attr)


def _service_command(
    parser: argparse.ArgumentParser, settings_ref: str, serve_ref: str
) -> Callable[[argparse.Namespace], int]:
    def run(args: argparse.Namespace) -> int:
        settings = settings_or_exit(parser, _load(settings_ref), args)  # type: ignore[arg-type]
        redis_url = getattr(settings, "redis_url", "")
        env = f"{type(settings).model_config.get('env_prefix', '')}REDIS_URL"
        if hasattr(settings, "redis_url") and not redis_url:
            # No built-in Redis: a default would silently share someone else's.
            print(
                f"{parser.prog}: error: no Redis given: pass --redis-url (env {env}), "
                "for example redis://HOST:6379/0",
                file=sys.stderr,
            )
            return 2
        problem = redis_unreachable(redis_url) if redis_url else None
        if problem:
            print(
                f"{parser.prog}: error: cannot reach Redis at {redacted_url(redis_url)} ({problem}); "
                f"start it, or point --redis-url (env {env}) at a running one",
                file=sys.stderr,
            )
            return 1
        setup_logging(getattr(settings, "log_level", "info"))
        serve = _load(serve_ref)
        try:
            asyncio.run(serve(settings))  # type: ignore[operator]
        except KeyboardInterrupt:
            pass
        except OSError as exc:
            print(f"{parser.prog}: {exc}", file=sys.stderr)
            return 1
        return 0

    return run


class OneLineParser(argparse.ArgumentParser):
    """Bad arguments get one line naming what to fix and exit status 2, not
    the usage text (which --help prints). Subcommands inherit the class."""

    def error(self, message: str) -> typing.NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="lookaside", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (help_text, settings_ref, serve_ref) in SERVICES.items():
        settings_cls = _load(settings_ref)
        p = sub.add_parser(name, help=help_text, description=help_text)
        add_settings_arguments(p, settings_cls)  # type: ignore[arg-type]
        p.set_defaults(func=_service_command(p, settings_ref, serve_ref))
    for extra in (
        "lookaside.demo.cli",
        "lookaside.lab",
        "lookaside.certs",
        "lookaside.probe",
        "lookaside.ctl",
        "lookaside.watch",
        "lookaside.chaos.run",
        "lookaside.state_cli",
        "lookaside.xds_bootstrap",
    ):
        importlib.import_module(extra).add_subcommand(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    raise SystemExit(main())
