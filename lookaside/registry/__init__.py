"""The backend registry: pools, backends and leases, kept in Redis.

Nothing in this package knows the grpclb wire format. The balancer turns the
snapshots it produces into server lists; another front end (xDS, DNS, the
admin API) can read the same snapshots.
"""

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
    "Backend",
    "BackendState",
    "DropRate",
    "PoolConfig",
    "PoolSnapshot",
    "RegistryError",
    "RegistryStore",
]
