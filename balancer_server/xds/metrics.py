"""Prometheus metrics of the ADS server, on the balancer's registry."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

from balancer_server.metrics import REGISTRY

XDS_STREAMS_OPEN = Gauge(
    "lookaside_balancer_xds_streams_open", "Open ADS (xDS) streams", registry=REGISTRY
)
XDS_RESPONSES = Counter(
    "lookaside_balancer_xds_responses_total",
    "DiscoveryResponses written to ADS streams, per resource type (lds, rds, cds, eds)",
    ["type"],
    registry=REGISTRY,
)
XDS_ACKS = Counter(
    "lookaside_balancer_xds_acks_total",
    "DiscoveryResponses a client accepted (ACK), per resource type",
    ["type"],
    registry=REGISTRY,
)
XDS_NACKS = Counter(
    "lookaside_balancer_xds_nacks_total",
    "DiscoveryResponses a client refused (NACK; it keeps the version it had), per resource type",
    ["type"],
    registry=REGISTRY,
)
XDS_REFUSED = Counter(
    "lookaside_balancer_xds_streams_refused_total",
    "ADS streams ended with an error, by reason (wildcard, long_name, malformed_name, "
    "too_many_names, unknown_type, malformed, timeout, streams_per_address, credentials)",
    ["reason"],
    registry=REGISTRY,
)
XDS_UPDATE_SECONDS = Histogram(
    "lookaside_balancer_xds_update_seconds",
    "From a change of a resource to its write on each ADS stream that subscribes to it, "
    "per resource type (the balancer's own part of a registration's way to xDS clients)",
    ["type"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
    registry=REGISTRY,
)
