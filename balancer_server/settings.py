"""The balancer's settings: flags, environment (LOOKASIDE_BALANCER_*) and
their checks."""

from __future__ import annotations

from typing import Annotated

from pydantic import AfterValidator, Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from server_common.declarative import StateFile
from server_common.settings import (
    OptionalFile,
    RedisUrl,
    blaming,
    check_backend_tls,
    check_redis_url,
    host_port,
    parse_networks,
    read_secret,
)


def default_workers() -> int:
    """The cores this process may run on (its CPU affinity; all of the
    machine's where that is unknown)."""
    import os

    try:
        return len(os.sched_getaffinity(0)) or 1
    except (AttributeError, OSError):
        return os.cpu_count() or 1


# More balancer workers than this is a typo, not a plan (each is a process
# of its own, with its own Redis connections).
MAX_WORKERS = 256


def check_workers(value: int) -> int:
    if value < 1:
        raise ValueError(
            f"{value} workers cannot serve: give 1 (one process, no supervisor) or more "
            "(default: the number of cores)"
        )
    if value > MAX_WORKERS:
        raise ValueError(
            f"{value} workers is more than the {MAX_WORKERS} allowed; about one per core serves best"
        )
    return value


class BalancerSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="LOOKASIDE_BALANCER_", extra="ignore")

    listen: str = Field(
        "0.0.0.0:50051", description="host:port for BalanceLoad, registration, health"
    )
    redis_url: RedisUrl = Field(
        "", description="the registry's Redis, e.g. redis://HOST:6379/0 (required)"
    )
    redis_url_file: str = Field(
        "", description="file holding the Redis URL (keeps a password out of ps and env)"
    )
    redis_cluster: bool = Field(
        False, description="--redis-url names a node of a Redis Cluster (any one)"
    )
    metrics_listen: str = Field(
        "127.0.0.1:9464",
        description="host:port for Prometheus /metrics (HTTPS with --tls-cert); empty to disable",
    )
    replica_id: str = Field(
        "",
        description="name of this replica; default host-pid (each worker adds -w<i>: "
        "replica-w0, replica-w1, ...)",
    )
    workers: Annotated[int, AfterValidator(check_workers)] = Field(
        default_workers(),
        description="worker processes sharing --listen (SO_REUSEPORT) under a supervisor that "
        "restarts them; 1: a single process, no supervisor. With more than one, --metrics-listen "
        'serves every worker\'s metrics with a label worker="<i>". Default: the cores this '
        "process may use",
    )
    resync_interval: float = Field(1.0, gt=0, description="seconds between version checks")
    reap_interval: float = Field(0.5, gt=0, description="seconds between lease expiry sweeps")
    report_flush_interval: float = Field(
        1.0, gt=0, description="seconds between load report writes"
    )
    health_checks: bool = Field(
        True, description="probe backends over grpc.health.v1 (pools can opt out)"
    )
    max_eject_share: float = Field(
        0.5,
        ge=0,
        le=1,
        description="most of a pool that lease expiry, health checks and outlier detection may remove at once",
    )
    outage_grace: float = Field(
        15.0,
        ge=0,
        description="seconds after Redis comes back in which leases that were live before the outage are not evicted",
    )
    panic_guard_bound: float = Field(
        180.0,
        gt=0,
        description="most seconds the panic guard keeps a backend listed that would have been removed",
    )
    grace: float = Field(5.0, ge=0, description="seconds in-flight streams get on shutdown")
    state_file: StateFile = Field(
        "",
        description="declared pools (YAML or JSON, as `lookaside export` writes): applied at "
        "start and again whenever Redis comes back empty",
    )
    log_level: str = Field("info", description="debug, info, warning or error")
    # Registration credentials (balancer_server.auth, docs/security.md).
    registration_token: str = Field(
        "",
        description="global registration token (admits every pool); UNSAFE as a flag (shows "
        "in ps): use --registration-token-file or the environment",
        repr=False,
    )
    registration_token_file: OptionalFile = Field("", description="file holding the global token")
    registration_policy: OptionalFile = Field(
        "", description="JSON/YAML file: per-pool tokens, mTLS identities, creation"
    )
    insecure_registration: bool = Field(
        False, description="DEVELOPMENT ONLY: admit registrations that carry no credential"
    )
    trusted_networks: str = Field(
        "127.0.0.0/8,::1/128",
        description="comma-separated CIDRs from which registration tokens may come over "
        "plaintext; from elsewhere they need TLS (0.0.0.0/0,::/0 trusts every network)",
    )
    # TLS (balancer_server.tls).
    tls_cert: OptionalFile = Field("", description="PEM certificate chain: serve TLS on --listen")
    tls_key: OptionalFile = Field("", description="PEM private key of --tls-cert")
    tls_client_ca: OptionalFile = Field("", description="PEM CA bundle: verify client certificates")
    require_client_cert: bool = Field(False, description="refuse clients without a certificate")
    # TLS to the backends, for the balancer's own probes (balancer_server.tls).
    backend_tls_ca: OptionalFile = Field(
        "", description="PEM CA bundle: probe backends over TLS verified with it (empty: plaintext)"
    )
    backend_tls_server_name: str = Field(
        "",
        description="name the backends' certificates must carry ({pool} is the pool's name); "
        "default the backend's address",
    )
    backend_tls_cert: OptionalFile = Field(
        "", description="PEM client certificate for backends that require mTLS"
    )
    backend_tls_key: OptionalFile = Field("", description="PEM private key of --backend-tls-cert")
    # Limits against abuse (balancer_server.limits).
    max_streams_per_address: int = Field(
        1000, ge=1, description="open BalanceLoad streams per client IPv4 address or IPv6 /64"
    )
    max_stream_age: float = Field(
        0.0, ge=0, description="seconds after which a connection is told to go away (0: never)"
    )
    report_burst: int = Field(
        5, ge=1, description="load reports a stream may send ahead of its interval"
    )
    max_stream_age_grace: float = Field(
        30.0, ge=0, description="seconds a connection's streams get after that, then cancelled"
    )

    @field_validator("listen")
    @classmethod
    def _listen(cls, v: str) -> str:
        return host_port(v, "listen", port_zero=True)

    @model_validator(mode="after")
    def _secret_files(self) -> BalancerSettings:
        if self.redis_url_file:
            url = blaming("redis_url_file", read_secret, self.redis_url_file, "Redis URL file")
            self.redis_url = blaming("redis_url_file", check_redis_url, url)
        return self

    @model_validator(mode="after")
    def _backend_tls(self) -> BalancerSettings:
        check_backend_tls(
            self.backend_tls_ca, self.backend_tls_cert, self.backend_tls_key,
            self.backend_tls_server_name,
        )  # fmt: skip
        return self

    @field_validator("metrics_listen")
    @classmethod
    def _metrics_listen(cls, v: str) -> str:
        return host_port(v, "metrics listen", port_zero=True) if v.strip() else ""

    @field_validator("trusted_networks")
    @classmethod
    def _trusted_networks(cls, v: str) -> str:
        parse_networks(v, "trusted networks")
        return v.strip()
