"""`lookaside apply -f FILE` and `lookaside export`: declared operator state
(server_common.declarative) written to, or read from, a registry's Redis.

apply merges (a partial `config:` changes only the keys it names) and
prints every change, old -> new; --dry-run prints them and writes nothing;
--prune also removes what the file leaves out of the pools it names. The
Redis comes from --redis-url (env LOOKASIDE_STATE_REDIS_URL), else the
context `lookaside up` wrote (lookaside.context); with neither, the command
refuses.
"""

from __future__ import annotations

import argparse
import asyncio
import sys

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from lookaside.ctl import add_plan_flags
from lookaside.redis_process import redis_unreachable
from server_common.settings import (
    add_settings_arguments,
    check_redis_url,
    redacted_url,
    settings_or_exit,
)

ENV_URL = "LOOKASIDE_STATE_REDIS_URL"


class StateSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="LOOKASIDE_STATE_", extra="ignore")

    redis_url: str = Field("", description="the registry's Redis; default: the context's")
    redis_cluster: bool = Field(
        False, description="--redis-url names a node of a Redis Cluster (any one)"
    )

    @field_validator("redis_url")
    @classmethod
    def _redis_url(cls, v: str) -> str:
        return check_redis_url(v) if v.strip() else ""


async def _apply(settings: StateSettings, args: argparse.Namespace) -> int:
    from lookaside_registry.store import RegistryStore
    from server_common import declarative as d

    path = args.file
    doc = d.load(path)
    store = RegistryStore.from_url(settings.redis_url, cluster=settings.redis_cluster)
    try:
        result = await d.apply(
            store, doc, actor=f"apply:{path}", prune=args.prune, dry_run=args.dry_run
        )
    finally:
        await store.close()
    verb = "would change" if args.dry_run else "changed"
    for change in result.changes:
        print(f"{verb}  {change}")
    for pool, address in result.pending:
        print(f"pending  pool {pool}: hold on {address} (not registered yet)")
    if not result.changes:
        print(f"nothing to change: the registry already holds {path}")
    elif args.dry_run:
        print("dry run: nothing was written")
    return 0


async def _export(settings: StateSettings, fmt: str) -> int:
    from lookaside_registry.store import RegistryStore
    from server_common import declarative as d

    store = RegistryStore.from_url(settings.redis_url, cluster=settings.redis_cluster)
    try:
        doc = await d.export(store)
    finally:
        await store.close()
    sys.stdout.write(d.dump(doc, fmt))
    return 0


def _redis_from_context(settings: StateSettings) -> str:
    """What named the Redis URL; fills it from the context when no flag or
    variable did. ValueError with the line to print when nothing does."""
    from lookaside import context as ctx

    if settings.redis_url:
        return f"--redis-url (env {ENV_URL})"
    context = ctx.load()
    if context is None or not context.redis_url:
        raise ValueError(ctx.missing("Redis", "--redis-url", ENV_URL))
    settings.redis_url = check_redis_url(context.redis_url)
    return context.describe()


def _runner(parser: argparse.ArgumentParser, what: str) -> object:
    def run(args: argparse.Namespace) -> int:
        from server_common.declarative import StateError

        settings = settings_or_exit(parser, StateSettings, args)
        try:
            source = _redis_from_context(settings)
        except ValueError as exc:
            print(f"{parser.prog}: error: {exc}", file=sys.stderr)
            return 2
        problem = redis_unreachable(settings.redis_url, timeout=2.0)
        if problem:
            print(
                f"{parser.prog}: error: cannot reach Redis at {redacted_url(settings.redis_url)} "
                f"({problem}); it came from {source}: point --redis-url (env {ENV_URL}) at the "
                "registry's Redis",
                file=sys.stderr,
            )
            return 1
        try:
            if what == "apply":
                return asyncio.run(_apply(settings, args))
            return asyncio.run(_export(settings, args.format))
        except StateError as exc:
            print(f"{parser.prog}: error: {exc}", file=sys.stderr)
            return 2

    return run


def add_subcommand(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser(
        "apply",
        help="make the registry hold a declared state (merges; idempotent)",
        description="Applies pools, settings, static backends and holds from a YAML or JSON "
        "file (the format `lookaside export` writes). Merges: a partial config changes only "
        "the keys it names (JSON merge patch). Prints every change, "
        "old -> new. Removes nothing unless --prune.",
    )
    p.add_argument("-f", "--file", required=True, help="the state file")
    add_plan_flags(p)
    add_settings_arguments(p, StateSettings)
    p.set_defaults(func=_runner(p, "apply"))
    e = sub.add_parser("export", help="print the registry's operator state as YAML or JSON")
    e.add_argument("--format", choices=("yaml", "json"), default="yaml")
    add_settings_arguments(e, StateSettings)
    e.set_defaults(func=_runner(e, "export"))
