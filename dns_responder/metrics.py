"""Prometheus metrics of the DNS responder process."""

from __future__ import annotations

import logging

from prometheus_client import CollectorRegistry, Counter, Gauge

from server_common.metrics_http import serve_metrics

log = logging.getLogger("lookaside.dns")

REGISTRY = CollectorRegistry(auto_describe=True)

QUERIES = Counter(
    "lookaside_dns_queries_total",
    "DNS queries answered, by transport, record type and response code",
    ["transport", "qtype", "rcode"],
    registry=REGISTRY,
)
MALFORMED = Counter(
    "lookaside_dns_malformed_total",
    "Packets that were not a DNS message (answered FORMERR when they had a header)",
    ["transport"],
    registry=REGISTRY,
)
TRUNCATED = Counter(
    "lookaside_dns_truncated_total",
    "UDP replies too large for the asker, sent with TC set",
    registry=REGISTRY,
)
RATE_LIMITED = Counter(
    "lookaside_dns_rate_limited",
    "UDP queries over their source network's rate: dropped, or slipped (a truncated reply)",
    ["action"],
    registry=REGISTRY,
)
POOLS = Gauge(
    "lookaside_dns_pools",
    "Pools known to the responder (each has an SRV record)",
    registry=REGISTRY,
)
REDIS_UP = Gauge(
    "lookaside_dns_redis_up",
    "1 while the registry's Redis answers; the last snapshots are served when 0",
    registry=REGISTRY,
)


def start_metrics(listen: str, cert: str = "", key: str = "") -> None:
    """Serves /metrics on host:port (HTTPS with cert and key); an empty
    string disables it."""
    serve_metrics(listen, REGISTRY, cert, key)
