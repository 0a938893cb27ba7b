"""Redis key names. Every per-pool key carries the pool in a hash tag, so a
pool's keys share one Redis Cluster slot and multi-key scripts stay legal.
See docs/redis-layout.md."""

from __future__ import annotations

PREFIX = "lookaside"
POOLS = f"{PREFIX}:pools"  # SET of pool names (the only cross-pool key)
# STRING written by whoever applied a declared state (server_common.state_keeper):
# its absence means Redis lost its data since.
STATE_MARKER = f"{PREFIX}:state:applied"
CHANGES = f"{PREFIX}:changes"  # pub/sub channel; message = pool name
REPLICAS = f"{PREFIX}:replicas"  # HASH replica id -> last seen (ms, server time)
# HASH replica id -> JSON {"ts_ms", "total", "streams": [...]}: open xDS streams
XDS_STREAMS = f"{PREFIX}:xds:streams"
EVENTS_MAX = 1000


def pool_key(pool: str, part: str) -> str:
    return f"{PREFIX}:{{{pool}}}:{part}"


def config(pool: str) -> str:
    return pool_key(pool, "config")


def backends(pool: str) -> str:
    return pool_key(pool, "backends")


def leases(pool: str) -> str:
    return pool_key(pool, "leases")


def version(pool: str) -> str:
    return pool_key(pool, "version")


def events(pool: str) -> str:
    return pool_key(pool, "events")


def backend_tokens(pool: str) -> str:
    """HASH sha256(token) -> JSON BackendToken: registration tokens bound to one address."""
    return pool_key(pool, "backend_tokens")


def load_bucket(pool: str, bucket: int) -> str:
    return pool_key(pool, f"load:{bucket}")


def load_total(pool: str) -> str:
    return pool_key(pool, "load:total")


def streams(pool: str) -> str:
    return pool_key(pool, "streams")


def panic(pool: str) -> str:
    return pool_key(pool, "panic")


def outcomes(pool: str) -> str:
    return pool_key(pool, "outcomes")


def outcomes_judged(pool: str) -> str:
    return pool_key(pool, "outcomes:judged")


def accusers(pool: str) -> str:
    return pool_key(pool, "accusers")


def signals(pool: str) -> str:
    return pool_key(pool, "signals")


def holds(pool: str) -> str:
    return pool_key(pool, "holds")


def config_version(pool: str) -> str:
    return pool_key(pool, "config_version")
