"""mypy's check that both adapters implement the registry's port
(lookaside_registry.port): each function below type-checks only while the
adapter has every method of `Registry` with a compatible signature, and
OutlierStore every method of `OutlierPort`. Nothing here runs; `make lint`
and tests/lookaside/test_registry_port.py run mypy over it."""

from __future__ import annotations

from lookaside_registry.memory import MemoryStore
from lookaside_registry.outlier import OutlierStore
from lookaside_registry.port import OutlierPort, Registry
from lookaside_registry.store import RegistryStore


def redis_adapter(store: RegistryStore) -> Registry:
    return store


def memory_adapter(store: MemoryStore) -> Registry:
    return store


def outlier_adapter(outliers: OutlierStore) -> OutlierPort:
    return outliers
