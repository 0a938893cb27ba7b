"""The backend registry: pools, backends and leases, kept in Redis.

This package is the registry's closed port: only it talks to Redis, and
callers catch its errors (lookaside.registry.errors). RegistryStore keeps
the registry in Redis, MemoryStore in memory, with the same operations;
every backend state change follows one table (lookaside.registry.machine).
Nothing in this package knows the grpclb wire format. The balancer turns the
snapshots it produces into server lists; another front end (xDS, DNS, the
admin API) can read the same snapshots.
"""

from lookaside.registry.errors import (
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
from lookaside.registry.machine import Actor, Event, Key, Outcome
from lookaside.registry.memory import MemoryStore
from lookaside.registry.model import (
    Backend,
    BackendState,
    DropRate,
    PoolConfig,
    PoolSnapshot,
)
from lookaside.registry.store import RegistryStore
from lookaside.registry.validation import RegistryError

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
    "RegistryError",
    "RegistryFailure",
    "RegistryStore",
    "TransitionRefused",
    "Unavailable",
    "VersionConflict",
]
