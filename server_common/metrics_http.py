"""Serving a process's Prometheus /metrics on its own port."""

from __future__ import annotations

import logging

from prometheus_client import CollectorRegistry, start_http_server

from server_common.settings import check_key_pair

log = logging.getLogger("lookaside")


def serve_metrics(listen: str, registry: CollectorRegistry, cert: str = "", key: str = "") -> None:
    """Serves /metrics on host:port in a background thread, over HTTPS with
    a certificate and key (PEM files); an empty string disables it. Without
    a host (":9464") it is served on 127.0.0.1 only; other interfaces need
    their address (0.0.0.0:9464 for all). A port that cannot be bound stops
    the process with a clear message."""
    if not listen:
        return
    host, _, port = listen.rpartition(":")
    if cert:
        try:
            check_key_pair(cert, key)
        except ValueError as exc:
            raise SystemExit(f"cannot serve /metrics over HTTPS: {exc}") from None
    try:
        start_http_server(
            int(port),
            addr=host.strip("[]") or "127.0.0.1",
            registry=registry,
            certfile=cert or None,
            keyfile=key or None,
        )
    except (OSError, ValueError) as exc:
        raise SystemExit(
            f"cannot serve /metrics on {listen!r} ({exc}); "
            "give --metrics-listen another host:port, or an empty string to disable it"
        ) from None
    log.info("metrics on %s://%s/metrics", "https" if cert else "http", listen)
