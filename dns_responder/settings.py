"""Settings of the DNS responder (env prefix LOOKASIDE_DNS_)."""

from __future__ import annotations

import ipaddress
import json
import re

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from server_common.settings import OptionalFile, RedisUrl, split_host_port

_LABEL_RE = re.compile(r"^[A-Za-z0-9_]([A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?$")


def check_dns_name(name: str, what: str) -> str:
    """A DNS name of letters, digits, '-' and '_' labels, without the final dot."""
    name = name.strip().rstrip(".")
    labels = name.split(".")
    if not name or len(name) > 253 or not all(_LABEL_RE.match(label) for label in labels):
        raise ValueError(
            f"{what} {name!r} is not a DNS name: use dot-separated labels of 1..63 "
            "characters of [A-Za-z0-9_-]"
        )
    return name.lower()


def parse_balancers(spec: str) -> list[tuple[str, int]]:
    """The advertised balancer replicas: "host:port,host:port" -> [(host, port)].
    A host is an IP address or a DNS name; ports must be 1..65535."""
    out: list[tuple[str, int]] = []
    for item in spec.split(","):
        if not item.strip():
            continue
        host, port = split_host_port(item, "balancer")
        if port == 0:
            raise ValueError(f"balancer {item.strip()!r}: port 0 cannot be advertised")
        try:
            host = str(ipaddress.ip_address(host))
        except ValueError:
            host = check_dns_name(host, "balancer host")
        out.append((host, port))
    if not out:
        raise ValueError("balancers is empty: give at least one host:port of a balancer replica")
    return out


class DnsSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="LOOKASIDE_DNS_", extra="ignore")

    listen: str = Field("127.0.0.1:8053", description="host:port for DNS over UDP and TCP")
    redis_url: RedisUrl = Field(
        "", description="the registry's Redis, e.g. redis://HOST:6379/0 (required)"
    )
    redis_cluster: bool = Field(
        False, description="--redis-url names a node of a Redis Cluster (any one)"
    )
    zone: str = Field("lookaside.test", description="the zone answered; pools are <pool>.<zone>")
    balancers: str = Field(
        "127.0.0.1:50051",
        description="comma-separated host:port of the balancer replicas to advertise in SRV records",
    )
    ttl: int = Field(5, ge=0, le=86_400, description="TTL in seconds of every record")
    resync_interval: float = Field(1.0, gt=0, description="seconds between registry version checks")
    service_config: str = Field(
        '{"loadBalancingConfig":[{"grpclb":{}}]}',
        description="service config published as TXT _grpc_config.<pool>.<zone>; empty for none",
    )
    metrics_listen: str = Field(
        "127.0.0.1:9465", description="host:port for Prometheus /metrics; empty to disable"
    )
    # Response-rate limiting over UDP (dns_responder.ratelimit).
    rate_limit: float = Field(
        100.0,
        ge=0,
        description="UDP answers a second per source network (IPv4 /24, IPv6 /56); 0: no limit",
    )
    rate_limit_burst: float = Field(
        200.0, ge=1, description="UDP answers a source network may get at once"
    )
    rate_limit_slip: int = Field(
        2,
        ge=0,
        description="every Nth query over the limit gets a truncated reply (retry over TCP); "
        "0: drop them all",
    )
    metrics_tls_cert: OptionalFile = Field(
        "", description="PEM certificate chain: serve /metrics over HTTPS"
    )
    metrics_tls_key: OptionalFile = Field("", description="PEM private key of --metrics-tls-cert")
    log_level: str = Field("info", description="debug, info, warning or error")

    @field_validator("listen")
    @classmethod
    def _check_listen(cls, value: str) -> str:
        split_host_port(value, "listen")
        return value.strip()

    @field_validator("zone")
    @classmethod
    def _check_zone(cls, value: str) -> str:
        return check_dns_name(value, "zone")

    @field_validator("balancers")
    @classmethod
    def _check_balancers(cls, value: str) -> str:
        parse_balancers(value)
        return value

    @field_validator("service_config")
    @classmethod
    def _check_service_config(cls, value: str) -> str:
        value = value.strip()
        if not value:
            return ""
        try:
            parsed = json.loads(value)
        except json.JSONDecodeError as exc:
            raise ValueError(f"service_config is not valid JSON: {exc}") from None
        if not isinstance(parsed, dict):
            raise ValueError(
                'service_config must be a JSON object, like {"loadBalancingConfig":[...]}'
            )
        return json.dumps(parsed, separators=(",", ":"))

    @model_validator(mode="after")
    def _metrics_tls(self) -> DnsSettings:
        if bool(self.metrics_tls_cert) != bool(self.metrics_tls_key):
            raise ValueError("give both --metrics-tls-cert and --metrics-tls-key, or neither")
        return self

    def balancer_addresses(self) -> list[tuple[str, int]]:
        return parse_balancers(self.balancers)
