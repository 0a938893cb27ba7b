"""`lookaside apply -f FILE` and `lookaside export`: declared operator state
(lookaside.declarative) written to, or read from, a registry's Redis."""

from __future__ import annotations

import argparse
import asyncio
import sys

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from lookaside.redis_process import redis_unreachable
from lookaside.settings import RedisUrl, add_settings_arguments, settings_or_exit


class StateSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="LOOKASIDE_STATE_", extra="ignore")

    redis_url: RedisUrl = Field("redis://127.0.0.1:6379/0", description="the registry's Redis")
    redis_cluster: bool = Field(
        False, description="--redis-url names a node of a Redis Cluster (any one)"
    )


async def _apply(settings: StateSettings, path: str) -> int:
    from lookaside import declarative as d
    from lookaside.registry.store import RegistryStore

    doc = d.load(path)
    store = RegistryStore.from_url(settings.redis_url, cluster=settings.redis_cluster)
    try:
        result = await d.apply(store, doc, actor=f"apply:{path}")
    finally:
        await store.close()
    for change in result.changes:
        print(f"changed  {change}")
    for pool, address in result.pending:
        print(f"pending  pool {pool}: hold on {address} (not registered yet)")
    if not result.changes:
        print(f"nothing to change: the registry already holds {path}")
    return 0


async def _export(settings: StateSettings, fmt: str) -> int:
    from lookaside import declarative as d
    from lookaside.registry.store import RegistryStore

    store = RegistryStore.from_url(settings.redis_url, cluster=settings.redis_cluster)
    try:
        doc = await d.export(store)
    finally:
        await store.close()
    sys.stdout.write(d.dump(doc, fmt))
    return 0


def _runner(parser: argparse.ArgumentParser, what: str) -> object:
    def run(args: argparse.Namespace) -> int:
        from lookaside.declarative import StateError

        settings = settings_or_exit(parser, StateSettings, args)
        problem = redis_unreachable(settings.redis_url, timeout=2.0)
        if problem:
            print(
                f"{parser.prog}: error: cannot reach Redis at {settings.redis_url} ({problem}); "
                "point --redis-url (env LOOKASIDE_STATE_REDIS_URL) at the registry's Redis",
                file=sys.stderr,
            )
            return 1
        try:
            if what == "apply":
                return asyncio.run(_apply(settings, args.file))
            return asyncio.run(_export(settings, args.format))
        except StateError as exc:
            print(f"{parser.prog}: error: {exc}", file=sys.stderr)
            return 2

    return run


def add_subcommand(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser(
        "apply",
        help="make the registry hold a declared state (idempotent)",
        description="Applies pools, settings, static backends and holds from a YAML or JSON "
        "file (the format `lookaside export` writes). Adds and updates; removes nothing.",
    )
    p.add_argument("-f", "--file", required=True, help="the state file")
    add_settings_arguments(p, StateSettings)
    p.set_defaults(func=_runner(p, "apply"))
    e = sub.add_parser("export", help="print the registry's operator state as YAML or JSON")
    e.add_argument("--format", choices=("yaml", "json"), default="yaml")
    add_settings_arguments(e, StateSettings)
    e.set_defaults(func=_runner(e, "export"))
