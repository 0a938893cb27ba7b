"""The lease keeper: an I/O-free state machine for a backend's registration,
driven by Registration (threads) and AsyncRegistration (asyncio).

It says which call to make next, where, and after what delay; the driver
makes it and reports the outcome. Rules:
- registering: each balancer address in turn, at once; once every address
  failed in a row, a jittered backoff (1 s, x1.6, jitter 0.2, at most 30 s)
  before the next round. It never gives up on its own (only stop() ends it),
  except on a refusal that retrying cannot fix (a bad argument, a missing or
  wrong credential), which is raised;
- leased: a heartbeat every interval the balancer gave; a failed one moves to
  the next balancer and tries again sooner; a refused lease (NOT_FOUND after
  a Redis outage, FAILED_PRECONDITION or PERMISSION_DENIED for a lease id
  the balancer no longer honours) goes back to registering, which then
  retries even refusals, since no caller is left to raise them to.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import grpc

from client_lib.backoff import Backoff
from client_lib.load import LoadMeter
from client_lib.picker import FailedCall
from lookaside_proto.registry.v1 import registry_pb2 as pb

log = logging.getLogger("lookaside.registration")

LoadFn = Callable[[], dict[str, float]]
RPC_TIMEOUT = 5.0
# Refusals that retrying cannot fix.
FATAL = {
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.PERMISSION_DENIED,
    grpc.StatusCode.UNAUTHENTICATED,
}
# A heartbeat refused with one of these has lost its lease: register again.
LEASE_LOST = {
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.FAILED_PRECONDITION,
    grpc.StatusCode.PERMISSION_DENIED,
}


@dataclass
class LeaseSpec:
    balancers: list[str]
    pool: str
    port: int
    host: str = ""
    weight: int = 1
    zone: str = ""
    metadata: dict[str, str] = field(default_factory=dict)
    lease_ttl: float | None = None
    load: LoadFn | None = None
    meter: LoadMeter | None = None
    drain_delay: float = 0.5
    drain_timeout: float = 10.0
    token: str = ""

    def call_metadata(self) -> tuple[tuple[str, str], ...] | None:
        """The registration credential (`authorization: Bearer <token>`)."""
        return (("authorization", f"Bearer {self.token}"),) if self.token else None

    def register_request(self) -> pb.RegisterRequest:
        req = pb.RegisterRequest(
            pool=self.pool, host=self.host, port=self.port, weight=self.weight,
            zone=self.zone, metadata=self.metadata,
        )  # fmt: skip
        if self.lease_ttl is not None:
            req.lease_ttl.FromMilliseconds(int(self.lease_ttl * 1000))
        return req

    def heartbeat_request(self, backend_id: str, lease_id: str) -> pb.HeartbeatRequest:
        req = pb.HeartbeatRequest(pool=self.pool, backend_id=backend_id, lease_id=lease_id)
        source = self.load or (self.meter.snapshot if self.meter else None)
        if source is not None:
            try:
                figures = source()
                req.load.CopyFrom(
                    pb.BackendLoad(
                        utilization=float(figures.get("utilization", -1.0)),
                        in_flight=int(figures.get("in_flight", 0)),
                        qps=float(figures.get("qps", 0.0)),
                        latency_ms=float(figures.get("latency_ms", 0.0)),
                    )
                )
            except Exception:  # noqa: BLE001 - a broken load figure must not lose the lease
                log.exception("pool=%s: load figures failed; heartbeat sent without", self.pool)
        return req

    def in_flight(self) -> int:
        return self.meter.in_flight if self.meter else 0


def lease_spec(balancers: str | Sequence[str], pool: str, port: int, **kw: Any) -> LeaseSpec:
    addrs = [balancers] if isinstance(balancers, str) else list(balancers)
    addrs = [a for a in addrs if a]
    if not addrs:
        raise ValueError("no balancer address: give at least one host:port")
    return LeaseSpec(addrs, pool, port, **kw)


@dataclass(frozen=True, slots=True)
class Step:
    """Make `method` (Register or Heartbeat) on `address` after `delay` s.
    The request is built when it is sent (`request()`), after the delay, so
    a heartbeat carries the load of the interval that just ended."""

    method: str
    address: str
    build: Callable[[], Any]
    delay: float

    def request(self) -> Any:
        return self.build()


class LeaseKeeper:
    def __init__(self, spec: LeaseSpec, backoff: Backoff | None = None) -> None:
        self.spec = spec
        self.backoff = backoff or Backoff(maximum=30.0)
        self._index = 0
        self._failures_in_row = 0
        self._delay = 0.0
        self.backend_id = ""
        self.lease_id = ""
        self.address = ""
        self.interval = 1.0
        self.registrations = 0

    @property
    def leased(self) -> bool:
        return bool(self.lease_id)

    @property
    def balancer(self) -> str:
        return self.spec.balancers[self._index % len(self.spec.balancers)]

    def next_step(self) -> Step:
        if not self.leased:
            return Step("Register", self.balancer, self.spec.register_request, self._delay)
        backend_id, lease_id = self.backend_id, self.lease_id
        return Step(
            "Heartbeat",
            self.balancer,
            lambda: self.spec.heartbeat_request(backend_id, lease_id),
            self._delay,
        )

    def succeeded(self, response: Any) -> None:
        self._failures_in_row = 0
        self.backoff.reset()
        if isinstance(response, pb.RegisterResponse):
            self.backend_id, self.lease_id = response.backend_id, response.lease_id
            self.address = response.address
            self.interval = max(response.heartbeat_interval.ToMilliseconds() / 1000, 0.1)
            self.registrations += 1
            log.info(
                "registered pool=%s backend=%s address=%s via %s",
                self.spec.pool, self.backend_id, self.address, self.balancer,
            )  # fmt: skip
        self._delay = self.interval

    def failed(self, code: grpc.StatusCode, details: str) -> None:
        """Records a failed call; raises RegistrationRefused when retrying
        cannot help."""
        where = self.balancer
        if not self.leased:
            if code in FATAL and not self.registrations:
                raise RegistrationRefused(code, details)
            # Registering again in the background: nobody to raise to, so
            # even a refusal is retried (with backoff), and logged.
            self._failures_in_row += 1
            self._index += 1
            if self._failures_in_row % len(self.spec.balancers):
                self._delay = 0.0
            else:
                self._delay = self.backoff.next()
            log.warning(
                "pool=%s: registration via %s failed (%s: %s); next try via %s in %.1fs",
                self.spec.pool, where, code.name, details, self.balancer, self._delay,
            )  # fmt: skip
            return
        if code in LEASE_LOST:
            log.warning(
                "pool=%s: lease lost (%s: %s); registering again",
                self.spec.pool,
                code.name,
                details,
            )
            self.lease_id = ""
            self._delay = 0.0
            return
        self._index += 1
        self._delay = min(self.interval / 2, 1.0)
        log.warning(
            "pool=%s: heartbeat via %s failed (%s); next via %s in %.1fs",
            self.spec.pool, where, code.name, self.balancer, self._delay,
        )  # fmt: skip


class RegistrationRefused(FailedCall):
    """The balancer refused the registration for a reason retrying cannot
    fix; code() and details() say which (a grpc.RpcError)."""

    def __str__(self) -> str:
        return f"registration refused: {self.code().name}: {self.details()}"
