"""The backend registry: pools, backends and leases, kept in Redis.

This package is the registry's closed port: only it talks to Redis, and
callers catch its errors (lookaside_registry.errors). Its operations are
typed per consumer in lookaside_registry.port (`Registry` is all of them);
RegistryStore keeps the registry in Redis, MemoryStore in memory;
every backend state change follows one table (lookaside_registry.machine).
Nothing in this package knows the grpclb wire format. The balancer turns the
snapshots it produces into server lists; another front end (xDS, DNS, the
admin API) can read the same snapshots.
"""

from lookaside_registry.errors import (
    Conflict,
    InvalidInput,
    LeaseRefused,
    NotFound,
    PoolFull,
    RefusedByHold,
    RegistryFailure,
    TooManyPools,
    TransitionRefused,
    Unavailable,
    VersionConflict,
)
from lookaside_registry.machine import Actor, Event, Key, Outcome
from lookaside_registry.memory import MemoryStore
from lookaside_registry.model import (
    Backend,
    BackendState,
    DropRate,
    PoolConfig,
    PoolSnapshot,
)
from lookaside_registry.port import Registry
from lookaside_registry.store import RegistryStore
from lookaside_registry.validation import RegistryError

__all__ = [
    "Actor",
    "Backend",
    "BackendState",
    "Conflict",
    "DropRate",
    "Event",
    "InvalidInput",
    "Key",
    "LeaseRefused",
    "MemoryStore",
    "NotFound",
    "Outcome",
    "PoolConfig",
    "PoolSnapshot",
    "PoolFull",
    "TooManyPools",
    "RefusedByHold",
    "Registry",
    "RegistryError",
    "RegistryFailure",
    "RegistryStore",
    "TransitionRefused",
    "Unavailable",
    "VersionConflict",
]
