"""Prometheus metrics of the balancer process."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from lookaside_registry.model import PoolSnapshot

REGISTRY = CollectorRegistry(auto_describe=True)

STREAMS_OPEN = Gauge(
    "lookaside_balancer_streams_open", "Open BalanceLoad streams", ["pool"], registry=REGISTRY
)
STREAMS_REFUSED = Counter(
    "lookaside_balancer_streams_refused_total",
    "BalanceLoad streams refused before the initial response",
    ["reason"],
    registry=REGISTRY,
)
LISTS_SENT = Counter(
    "lookaside_balancer_lists_sent_total",
    "Server lists (or fallback responses) written to streams",
    ["pool"],
    registry=REGISTRY,
)
REPORTS_INGESTED = Counter(
    "lookaside_balancer_load_reports_total",
    "ClientStats messages received and written to Redis",
    ["pool"],
    registry=REGISTRY,
)
REPORTS_MALFORMED = Counter(
    "lookaside_balancer_load_report_extensions_malformed_total",
    "ClientStats whose field 1001 was not a readable per-backend extension (skipped)",
    registry=REGISTRY,
)
REPORTS_FLUSH_ERRORS = Counter(
    "lookaside_balancer_load_report_flush_errors_total",
    "Failed writes of load reports to Redis (the counts are kept and retried)",
    registry=REGISTRY,
)
REGISTRATIONS = Counter(
    "lookaside_balancer_registrations_total",
    "Registration API calls",
    ["method", "code"],
    registry=REGISTRY,
)
EXPIRIES = Counter(
    "lookaside_balancer_lease_expiries_total",
    "Backends removed because their lease expired",
    ["pool"],
    registry=REGISTRY,
)
REDIS_UP = Gauge(
    "lookaside_balancer_redis_up", "1 when the last Redis sync succeeded", registry=REGISTRY
)
PANIC_HELD = Gauge(
    "lookaside_balancer_panic_held_backends",
    "Backends the panic guard keeps listed right now, per source (lease, health, outlier)",
    ["pool", "source"],
    registry=REGISTRY,
)
# The event a panic guard hold is for -> the gauge's source label.
PANIC_SOURCES = {"expire": "lease", "health_fail": "health", "eject": "outlier"}
PANICS = Counter(
    "lookaside_balancer_panic_total",
    "Times the panic guard kept backends listed that would have been removed",
    ["pool", "source"],
    registry=REGISTRY,
)
HEALTH_PROBES = Counter(
    "lookaside_balancer_health_probes_total",
    "Health probes by this replica",
    ["pool", "result"],
    registry=REGISTRY,
)
HEALTH_PROBERS = Gauge(
    "lookaside_balancer_health_probers", "Backends this replica probes", registry=REGISTRY
)
OUTLIER_UNAGREED = Counter(
    "lookaside_balancer_outlier_unagreed_total",
    "Backends that reported outcomes would have ejected, refused because fewer than the "
    "pool's outlier_min_reporters client streams accused them",
    ["pool"],
    registry=REGISTRY,
)
REPORTS_DISPLAY_ONLY = Counter(
    "lookaside_balancer_load_reports_display_only_total",
    "ClientStats counted for display but not as outlier evidence (the stream brought no "
    "client credential and its pool requires one)",
    ["pool"],
    registry=REGISTRY,
)
OUTLIER_EJECTIONS = Counter(
    "lookaside_balancer_outlier_ejections_total",
    "Backends ejected by outlier detection (by this replica)",
    ["pool"],
    registry=REGISTRY,
)
FANOUT_SECONDS = Histogram(
    "lookaside_balancer_fanout_seconds",
    "From a new list to its last write on the streams that were open then",
    ["pool"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
    registry=REGISTRY,
)
AUTH_REFUSALS = Counter(
    "lookaside_balancer_registration_auth_refusals_total",
    "Registration calls refused for their credential (UNAUTHENTICATED or PERMISSION_DENIED)",
    ["method", "code", "reason"],
    registry=REGISTRY,
)
LIMIT_REFUSALS = Counter(
    "lookaside_balancer_limit_refusals_total",
    "Calls refused by a limit against abuse (RESOURCE_EXHAUSTED)",
    ["limit"],
    registry=REGISTRY,
)
INSECURE_REGISTRATION = Gauge(
    "lookaside_balancer_insecure_registration",
    "1 while registrations without a credential are admitted (development switch)",
    registry=REGISTRY,
)
REPORTS_REFUSED = Counter(
    "lookaside_balancer_load_reports_refused_total",
    "ClientStats not counted, by reason (too_fast, negative, too_large, unknown_drop_token, "
    "unknown_backend_token, malformed, no_pool; over_share: a backend's claims cut to the "
    "stream's plausible share)",
    ["reason"],
    registry=REGISTRY,
)


def panic_held_gauge(pool: str, snapshot: PoolSnapshot | None) -> None:
    """A registry watcher hook: the held backends of the pool's snapshot,
    per source (every replica sees the same snapshot)."""
    counts = dict.fromkeys(PANIC_SOURCES.values(), 0)
    for b in snapshot.backends if snapshot is not None else ():
        if b.held:
            source = PANIC_SOURCES.get(b.guard_for, "lease")
            counts[source] += 1
    for source, n in counts.items():
        if n or (pool, source) in _HELD_SERIES:
            PANIC_HELD.labels(pool, source).set(n)
            _HELD_SERIES.add((pool, source))


_HELD_SERIES: set[tuple[str, str]] = set()

LRS_STREAMS_OPEN = Gauge(
    "lookaside_balancer_lrs_streams_open",
    "Open LRS (envoy.service.load_stats.v3) streams of xDS clients",
    registry=REGISTRY,
)
LRS_STREAMS_REFUSED = Counter(
    "lookaside_balancer_lrs_streams_refused_total",
    "LRS streams ended with an error, by reason (timeout, malformed, streams_per_address, "
    "bad_client_token, ...)",
    ["reason"],
    registry=REGISTRY,
)
LRS_REPORTS = Counter(
    "lookaside_balancer_lrs_reports_total",
    "Per-cluster LRS load reports counted into a pool's load (display only, never evidence)",
    ["pool"],
    registry=REGISTRY,
)
LRS_REPORTS_REFUSED = Counter(
    "lookaside_balancer_lrs_reports_refused_total",
    "Per-cluster LRS load reports (or parts of them) not counted, by reason (no_pool, "
    "too_fast, too_large, unknown_drop_category, malformed)",
    ["reason"],
    registry=REGISTRY,
)
