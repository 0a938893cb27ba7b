"""The registry's port: what each consumer of the registry may call, as
typing.Protocols. Two adapters implement all of it: RegistryStore (Redis,
lookaside_registry.store) and MemoryStore (in memory, lookaside_registry.
memory); lookaside_registry/port_check.py has mypy check both against
`Registry`, and tests/lookaside/test_registry_port.py runs that check.

Consumers name the narrowest protocol that covers their calls:

  WatchPort         the registry watcher (balancer feeds, DNS responder)
  RegistrationPort  the Registry gRPC service (register, heartbeat, ...)
  HealthPort        health verdicts (lookaside_registry.health)
  TransitionPort    operator transitions (lookaside_registry.transitions)
  ReaperPort        lease expiry (lookaside_registry.reaper)
  ReportPort        a balancer's load reports and stream counts
  ReplicaPort       balancer replica membership
  StatePort         declarative state: apply, export, the state keeper
  SignalPort        the admin API's golden-signal sampler
  OutlierPort       outlier detection's reads and sweeps (OutlierStore,
                    over Redis only: the sweep has no in-memory adapter)
  BalancerPort      everything the balancer process runs over one store
  DnsPort           the DNS responder
  AdminPort         the admin API
  Registry          all of the above but outliers, and what only tests and
                    tools call: what an adapter offers

Every method raises lookaside_registry.errors errors only (Unavailable when
the registry cannot be reached); the adapters' docstrings say the rest.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable, Mapping
from typing import Any, Protocol

from lookaside_registry.backend_ops import Lease, ReapResult, StepResult
from lookaside_registry.load import LoadWindow, ReplicaStreams
from lookaside_registry.machine import Event, Key
from lookaside_registry.model import Backend, PoolConfig, PoolSnapshot
from lookaside_registry.outlier import Outcomes, Reading, SweepResult, Verdict
from lookaside_registry.signals import CALL_RATE_SECONDS, CallRate
from lookaside_registry.tokens import BackendToken
from lookaside_registry.xds import ReplicaXdsStreams

__all__ = [
    "AdminPort",
    "BalancerPort",
    "Closeable",
    "DnsPort",
    "HealthPort",
    "OutlierPort",
    "PoolReads",
    "ReaperPort",
    "RegistrationPort",
    "Registry",
    "ReplicaPort",
    "ReportPort",
    "SignalPort",
    "StatePort",
    "TransitionPort",
    "WatchPort",
]


# -- building blocks -----------------------------------------------------------


class Closeable(Protocol):
    async def close(self) -> None: ...


class PoolReads(Protocol):
    """The pools and a consistent view of one."""

    async def list_pools(self) -> list[str]: ...

    async def get_pool(self, pool: str) -> PoolConfig | None: ...

    async def snapshot(self, pool: str) -> PoolSnapshot | None: ...


class Leaving(Protocol):
    """A backend leaves, by its lease."""

    async def deregister(
        self,
        pool: str,
        backend_id: str,
        lease_id: str,
        *,
        actor: str = ...,
        owner: str = ...,
    ) -> None: ...


class Stepping(Protocol):
    """One state machine event on one backend."""

    async def step(
        self,
        pool: str,
        backend_id: str,
        event: Event,
        *,
        actor: str,
        lease_id: str = ...,
        detail: str = ...,
        max_share: float = ...,
        owner: str = ...,
    ) -> StepResult: ...


# -- per consumer ----------------------------------------------------------------


class WatchPort(PoolReads, Leaving, Protocol):
    """What the registry watcher reads (and the deregistration of a backend
    that a Redis restored from an old snapshot brought back)."""

    def changes(self) -> AsyncIterator[str | None]: ...

    async def versions(self, pools: Iterable[str]) -> dict[str, int]: ...


class RegistrationPort(PoolReads, Leaving, Protocol):
    """What the Registry gRPC service writes and checks."""

    async def register(
        self,
        *,
        pool: str,
        host: str,
        ip: str,
        port: int,
        weight: int = ...,
        zone: str = ...,
        metadata: dict[str, str] | None = ...,
        lease_ttl_ms: int = ...,
        actor: str = ...,
        create_pool: bool = ...,
        max_backends: int = ...,
        owner: str = ...,
    ) -> Lease: ...

    async def heartbeat(
        self,
        pool: str,
        backend_id: str,
        lease_id: str,
        load: dict[str, float] | None = ...,
        *,
        owner: str = ...,
    ) -> int: ...

    async def drain(
        self,
        pool: str,
        backend_id: str,
        lease_id: str,
        *,
        actor: str = ...,
        owner: str = ...,
    ) -> bool: ...

    async def reserve_pool(self, pool: str, max_pools: int) -> None: ...

    async def release_pool(self, pool: str) -> None: ...

    async def backend_token(self, pool: str, token: str | bytes) -> BackendToken | None: ...


class HealthPort(Stepping, Protocol):
    """Health verdicts are state machine events."""


class TransitionPort(Protocol):
    """An operator's event, refused when the backend's state does not allow it."""

    async def operate(
        self, pool: str, backend_id: str, event: Event, *, actor: str
    ) -> StepResult: ...


class ReaperPort(Protocol):
    """Lease expiry, by the registry's clock."""

    async def list_pools(self) -> list[str]: ...

    async def now_ms(self) -> int: ...

    async def prune_index(self) -> list[str]: ...

    async def reap_expired(
        self, pool: str, max_share: float = ..., *, ended_before_ms: int = ...
    ) -> ReapResult: ...


class ReportPort(Protocol):
    """A balancer's flushes of client load reports and its stream counts."""

    async def add_reports(
        self,
        pool: str,
        batch_id: str,
        bucket: int,
        fields: Mapping[str, int],
        outcomes: Mapping[str, int] | None = ...,
        accusers: Iterable[str] = ...,
    ) -> bool: ...

    async def flush_reports(
        self,
        batch_id: str,
        bucket: int,
        pools: Mapping[str, tuple[Mapping[str, int], Mapping[str, int], Iterable[str]]],
        replica: str = ...,
        stream_counts: Mapping[str, int] | None = ...,
    ) -> None: ...

    async def set_stream_counts(self, replica: str, counts: Mapping[str, int]) -> None: ...

    async def clear_stream_counts(self, replica: str, pools: Iterable[str]) -> None: ...


class ReplicaPort(Protocol):
    """Balancer replica membership, and each replica's open xDS streams."""

    async def touch_replica(self, replica: str, stale_ms: int) -> list[str]: ...

    async def forget_replica(self, replica: str) -> None: ...

    async def set_xds_streams(
        self, replica: str, streams: list[dict[str, Any]], total: int
    ) -> None: ...

    async def clear_xds_streams(self, replica: str) -> None: ...


class StatePort(PoolReads, TransitionPort, Protocol):
    """Declarative state: applied and exported (server_common.declarative), and
    restored when the registry loses it (server_common.state_keeper)."""

    async def put_pool(
        self,
        config: PoolConfig,
        *,
        actor: str = ...,
        only_if_absent: bool = ...,
        only_if_exists: bool = ...,
        expected_version: int | None = ...,
    ) -> int: ...

    async def put_static(self, backend: Backend, *, actor: str = ...) -> int: ...

    async def update_backend(
        self, pool: str, backend_id: str, *, actor: str = ..., kind: str = ..., **fields: Any
    ) -> int: ...

    async def remove_backend(self, pool: str, backend_id: str, *, actor: str = ...) -> None: ...

    async def has_state_marker(self) -> bool: ...

    async def set_state_marker(self, value: str) -> None: ...


class LoadReads(Protocol):
    """Summed client load reports."""

    async def load_windows(self, pool: str, now: float | None = ...) -> list[LoadWindow]: ...

    async def load_total(self, pool: str) -> dict[str, int]: ...

    async def replica_streams(
        self, pool: str, now_ms: int | None = ...
    ) -> list[ReplicaStreams]: ...

    async def pools_streams(
        self, pools: list[str], now_ms: int | None = ...
    ) -> dict[str, list[ReplicaStreams]]: ...

    async def xds_streams(self, now_ms: int | None = ...) -> list[ReplicaXdsStreams]: ...


class SignalPort(PoolReads, LoadReads, Protocol):
    """The golden-signal sampler's reads and its stored history."""

    async def outcome_counts(self, pool: str) -> dict[str, Outcomes]: ...

    async def put_signal_sample(self, pool: str, slot: int, sample: Mapping[str, Any]) -> int: ...

    async def signal_history(self, pool: str, since_ms: int = ...) -> list[dict[str, Any]]: ...

    async def reported_call_rates(
        self, pool: str, now: float | None = ..., seconds: int = CALL_RATE_SECONDS
    ) -> list[CallRate]: ...


class OutlierPort(Protocol):
    """Outlier detection: the evidence of an interval, and the sweep that
    ejects and lets back (lookaside_registry.outlier.OutlierStore)."""

    async def read_interval(self, pool: str, interval_ms: int) -> Reading: ...

    async def sweep(
        self,
        config: PoolConfig,
        verdicts: list[Verdict] | None,
        *,
        passed: Iterable[str] = ...,
        max_share: float,
        actor: str = ...,
    ) -> SweepResult: ...


# -- per process -------------------------------------------------------------------


class BalancerPort(
    WatchPort,
    RegistrationPort,
    HealthPort,
    ReaperPort,
    ReportPort,
    ReplicaPort,
    StatePort,
    Closeable,
    Protocol,
):
    """Everything the balancer process runs over its one store."""


class DnsPort(WatchPort, Closeable, Protocol):
    """The DNS responder follows the pools as the balancer does."""


class AdminPort(StatePort, SignalPort, Closeable, Protocol):
    """The admin API: pools, backends, tokens, events, load and signals."""

    async def ping(self) -> None: ...

    async def delete_pool(self, pool: str, *, actor: str = ..., force: bool = ...) -> int: ...

    async def update_backend(
        self, pool: str, backend_id: str, *, actor: str = ..., kind: str = ..., **fields: Any
    ) -> int: ...

    async def remove_backend(self, pool: str, backend_id: str, *, actor: str = ...) -> None: ...

    async def events(self, pool: str, limit: int = ...) -> list[dict[str, Any]]: ...

    async def backend_tokens(self, pool: str) -> list[BackendToken]: ...

    async def mint_backend_token(
        self, pool: str, address: str, *, actor: str = ...
    ) -> tuple[str, BackendToken]: ...

    async def revoke_backend_token(
        self, pool: str, token_id_: str, *, actor: str = ...
    ) -> None: ...


class Registry(BalancerPort, DnsPort, AdminPort, Protocol):
    """The whole port, as both adapters offer it: the consumers' protocols,
    and the reads and writes that only tests and tools call."""

    async def put_hold(
        self, pool: str, backend_id: str, hold: Key, *, actor: str = ...
    ) -> StepResult: ...

    async def holds(self, pool: str) -> dict[str, str]: ...

    async def accusers_since(self, pool: str, since_ms: int) -> dict[str, int]: ...
