"""The balancer process: BalanceLoad, registration, health and reflection on
one grpc.aio server, plus Prometheus metrics on their own port."""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import socket
import time

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from balancer_server import metrics
from balancer_server.auth import (
    PolicyError,
    RegistrationAuth,
    RegistrationPolicy,
    parse_networks,
    read_secret,
)
from balancer_server.balance_load import SERVICE as LB_SERVICE
from balancer_server.balance_load import BalanceLoadService
from balancer_server.feeds import GC_HOLD, FeedHub
from balancer_server.health_checker import HealthChecker
from balancer_server.load_reports import LoadReportSink
from balancer_server.lrs import SERVICE as LRS_SERVICE
from balancer_server.lrs import LoadReportingService
from balancer_server.outlier_detector import OutlierDetector
from balancer_server.registration import RegistryService
from balancer_server.replicas import ReplicaSet
from balancer_server.settings import BalancerSettings
from balancer_server.tls import BackendTls, TlsConfigError, server_credentials
from balancer_server.xds.ads import SERVICE as ADS_SERVICE
from balancer_server.xds.ads import AdsService
from balancer_server.xds.hub import XdsHub
from balancer_server.xds_streams import XdsStreamPublisher, XdsStreamTable
from lookaside_proto.lb.v1 import load_balancer_pb2
from lookaside_proto.registry.v1 import registry_pb2, registry_pb2_grpc
from lookaside_registry.asyncutil import cancel_and_wait, until_signalled
from lookaside_registry.outlier import OutlierStore
from lookaside_registry.port import BalancerPort, OutlierPort
from lookaside_registry.reaper import reap_forever
from lookaside_registry.store import RegistryStore
from lookaside_registry.watcher import RegistryWatcher
from server_common.metrics_http import serve_metrics
from server_common.state_keeper import keeper_from_file

log = logging.getLogger("lookaside.balancer")

# Thousands of streams opening at once are refused (CANCELLED) under the
# default limits; these raise them. A call not taken up by the server within
# grpc.server_max_unrequested_time_in_server (30 s by default) is cancelled,
# which a burst of tens of thousands of streams reaches on two cores: better
# a slow start than a refusal that the client answers by reconnecting.
SERVER_OPTIONS = [
    ("grpc.max_concurrent_streams", 1 << 20),
    ("grpc.server.max_pending_requests", 1 << 16),
    ("grpc.server.max_pending_requests_hard_limit", 1 << 17),
    ("grpc.server_max_unrequested_time_in_server", 300),
    # Keepalive enforcement: a client pinging more often than every 10 s
    # gets GOAWAY after max_ping_strikes bad pings; the server pings idle
    # connections every minute and drops those that do not answer in 20 s.
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
    ("grpc.http2.max_ping_strikes", 2),
    ("grpc.keepalive_time_ms", 60_000),
    ("grpc.keepalive_timeout_ms", 20_000),
    # Metadata (headers) per call: registration metadata is small.
    ("grpc.max_metadata_size", 16 * 1024),
    ("grpc.max_receive_message_length", 1 << 20),
    # Off for a single process, so that a second balancer on the same port
    # fails loudly; workers (balancer_server.workers) turn it on to share it.
    ("grpc.so_reuseport", 0),
]
MIN_TOKEN_LENGTH = 16


def server_options(settings: BalancerSettings, reuseport: bool = False) -> list[tuple[str, int]]:
    options = [
        (k, int(reuseport)) if k == "grpc.so_reuseport" else (k, v) for k, v in SERVER_OPTIONS
    ]
    if settings.max_stream_age > 0:
        options.append(("grpc.max_connection_age_ms", int(settings.max_stream_age * 1000)))
        # Its streams get the grace to finish, then are cancelled; the
        # client reconnects (with backoff) and keeps its list meanwhile.
        grace_ms = int(settings.max_stream_age_grace * 1000)
        options.append(("grpc.max_connection_age_grace_ms", grace_ms))
    return options


def registration_auth(settings: BalancerSettings, announce: bool = True) -> RegistrationAuth:
    """The registration credentials the settings name (files read now);
    `announce` logs the warnings and sets the metric (a process that serves)."""
    tokens = [settings.registration_token]
    if settings.registration_token_file:
        tokens.append(read_secret(settings.registration_token_file, "registration token"))
    if any(0 < len(t) < MIN_TOKEN_LENGTH for t in tokens):
        raise PolicyError(
            f"the registration token needs at least {MIN_TOKEN_LENGTH} characters "
            "(python -c 'import secrets; print(secrets.token_urlsafe(32))')"
        )
    policy = (
        RegistrationPolicy.from_file(settings.registration_policy)
        if settings.registration_policy
        else None
    )
    auth = RegistrationAuth(
        policy,
        tokens,
        insecure=settings.insecure_registration,
        trusted_networks=parse_networks(settings.trusted_networks),
    )
    if not announce:
        return auth
    metrics.INSECURE_REGISTRATION.set(1 if auth.insecure else 0)
    if auth.insecure:
        log.warning(
            "INSECURE REGISTRATION: registrations without a credential are admitted and may "
            "create pools; anyone who reaches %s can take a pool's traffic. Development only.",
            settings.listen,
        )
    elif not auth.has_credentials:
        log.warning(
            "no registration token or policy is configured: only per-backend tokens (admin API "
            "/api/v1/pools/{pool}/backend-tokens) admit Register, Heartbeat, Drain and "
            "Deregister (set --registration-token or --registration-policy)"
        )
    return auth


def _epoch() -> str:
    """A short string unique to this process start: part of every token."""
    n = int(time.time() * 1000) ^ (os.getpid() << 40)
    digits = "0123456789abcdefghijklmnopqrstuvwxyz"
    out = ""
    while n:
        n, r = divmod(n, 36)
        out = digits[r] + out
    return out[-9:]


class BalancerServer:
    """The balancer over `store`, either adapter of the registry port.
    Outlier detection runs when `outliers` is given (OutlierStore: its sweep
    exists over Redis only). The store is closed at stop() when
    `owns_store`. from_settings() builds both over the settings' Redis."""

    def __init__(
        self,
        settings: BalancerSettings,
        store: BalancerPort,
        *,
        outliers: OutlierPort | None = None,
        owns_store: bool = False,
        reuseport: bool = False,
    ) -> None:
        self.settings = settings
        self.reuseport = reuseport
        self.replica_id = settings.replica_id or f"{socket.gethostname()}-{os.getpid()}"
        self.epoch = _epoch()
        self.store = store
        self.owns_store = owns_store
        self.hub = FeedHub(self.epoch)
        # How the balancer dials the backends (its probes), and how xDS
        # clients are told to.
        self.backend_tls = BackendTls.from_files(
            settings.backend_tls_ca, settings.backend_tls_cert, settings.backend_tls_key,
            settings.backend_tls_server_name,
        )  # fmt: skip
        # xDS (ADS) beside grpclb, from the same watcher.
        self.xds_hub = XdsHub(self.backend_tls)
        self.watcher = RegistryWatcher(
            self.store,
            resync_interval=settings.resync_interval,
            hooks=[self.hub.on_change, self.xds_hub.on_change, metrics.panic_held_gauge],
        )
        self.sink = LoadReportSink(
            self.store,
            replica_id=self.replica_id,
            flush_interval=settings.report_flush_interval,
        )
        self.health = health.aio.HealthServicer()
        self.replicas = ReplicaSet(self.store, self.replica_id)
        # The ADS service reports its streams here; the publisher writes
        # them to the registry for the admin API.
        self.xds_streams = XdsStreamTable()
        self.xds_publisher = XdsStreamPublisher(
            self.store, self.xds_streams, self.replica_id, interval=settings.report_flush_interval
        )
        self.checker = HealthChecker(
            self.store,
            self.watcher,
            self.replicas,
            max_share=settings.max_eject_share,
            tls=self.backend_tls,
        )
        self.outliers = (
            None
            if outliers is None
            else OutlierDetector(
                outliers, self.watcher, self.replicas, max_share=settings.max_eject_share
            )
        )
        self.auth = registration_auth(settings)
        self.credentials = server_credentials(
            settings.tls_cert, settings.tls_key, settings.tls_client_ca,
            settings.require_client_cert,
        )  # fmt: skip
        self.server: grpc.aio.Server | None = None
        self.port = 0
        self._tasks: list[asyncio.Task[None]] = []

    @classmethod
    def from_settings(cls, settings: BalancerSettings, reuseport: bool = False) -> BalancerServer:
        """The balancer over a RegistryStore on settings.redis_url (its own,
        closed at stop()), with outlier detection; `reuseport` lets other
        processes listen on the same port (workers)."""
        store = RegistryStore.from_url(
            settings.redis_url,
            cluster=settings.redis_cluster,
            guard_bound_ms=int(settings.panic_guard_bound * 1000),
        )
        return cls(
            settings, store, outliers=OutlierStore(store), owns_store=True, reuseport=reuseport
        )

    async def start(self) -> int:
        await self.watcher.start()
        self.sink.start()
        self.replicas.start()
        self.xds_publisher.start()
        if self.outliers is not None:
            self.outliers.start()
        else:
            log.info("outlier detection is off: no outlier store was given")
        if self.settings.health_checks:
            self.checker.start()
            self.checker.reconcile_all()

        def expired(pool: str, ids: list[str]) -> None:
            metrics.EXPIRIES.labels(pool).inc(len(ids))

        def panic(pool: str, ids: list[str]) -> None:
            if ids:
                metrics.PANICS.labels(pool, "lease").inc()

        self._tasks.append(
            asyncio.create_task(
                reap_forever(
                    self.store,
                    interval=self.settings.reap_interval,
                    max_share=self.settings.max_eject_share,
                    outage_grace=self.settings.outage_grace,
                    on_expired=expired,
                    on_panic=panic,
                )
            )
        )
        self._tasks.append(asyncio.create_task(self._redis_gauge()))
        server = grpc.aio.server(options=server_options(self.settings, self.reuseport))
        self.balance_load = BalanceLoadService(
            self.hub,
            self.sink,
            max_streams_per_address=self.settings.max_streams_per_address,
            report_burst=self.settings.report_burst,
            auth=self.auth,
            replica_id=self.replica_id,
        )
        self.lrs = LoadReportingService(
            self.watcher.snapshots,
            self.sink,
            auth=self.auth,
            max_streams_per_address=self.settings.max_streams_per_address,
            report_burst=self.settings.report_burst,
        )
        self.ads = AdsService(
            self.xds_hub,
            self.xds_streams,
            auth=self.auth,
            replica_id=self.replica_id,
            max_streams_per_address=self.settings.max_streams_per_address,
        )
        server.add_generic_rpc_handlers(
            (self.balance_load.handler(), self.ads.handler(), self.lrs.handler())
        )
        registry_pb2_grpc.add_RegistryServicer_to_server(
            RegistryService(self.store, self.auth), server
        )
        health_pb2_grpc.add_HealthServicer_to_server(self.health, server)
        names = (
            load_balancer_pb2.DESCRIPTOR.services_by_name["LoadBalancer"].full_name,
            registry_pb2.DESCRIPTOR.services_by_name["Registry"].full_name,
            health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
            LRS_SERVICE,
            ADS_SERVICE,
            reflection.SERVICE_NAME,
        )
        reflection.enable_server_reflection(names, server)
        try:
            if self.credentials is None:
                self.port = server.add_insecure_port(self.settings.listen)
            else:
                self.port = server.add_secure_port(self.settings.listen, self.credentials)
        except RuntimeError:
            self.port = 0
        if self.port == 0:
            await self.stop(0)
            raise OSError(
                f"cannot listen on {self.settings.listen}: the address is in use or not local"
            )
        await server.start()
        self.server = server
        for service in ("", LB_SERVICE, ADS_SERVICE, "lookaside.registry.v1.Registry"):
            await self.health.set(service, health_pb2.HealthCheckResponse.SERVING)
        log.info(
            "balancer listening on %s (port %d, %s; backends probed over %s) replica=%s epoch=%s",
            self.settings.listen,
            self.port,
            "plaintext" if self.credentials is None else "TLS",
            self.backend_tls.mode,
            self.replica_id,
            self.epoch,
        )
        return self.port

    async def _redis_gauge(self) -> None:
        while True:
            metrics.REDIS_UP.set(1 if self.watcher.redis_ok else 0)
            await asyncio.sleep(1.0)

    async def stop(self, grace: float | None = None) -> None:
        grace = self.settings.grace if grace is None else grace
        await self.health.enter_graceful_shutdown()
        if self.server is not None:
            try:
                # grpc.aio's stop can wait forever on a call it failed to
                # cancel; the process must still get to exit.
                await asyncio.wait_for(self.server.stop(grace), grace + SERVER_STOP_SLACK)
            except TimeoutError:
                log.warning(
                    "gRPC server did not stop within %.0fs; going on", grace + SERVER_STOP_SLACK
                )
        await cancel_and_wait(self._tasks)
        await self.checker.stop()
        if self.outliers is not None:
            await self.outliers.stop()
        await self.replicas.stop()
        await self.xds_publisher.stop()
        await self.sink.stop()
        await self.watcher.stop()
        if self.owns_store:
            await self.store.close()


# Beyond the grace, how long grpc.aio's server stop may take (cancelling the
# streams still open) before shutdown goes on without it.
SERVER_STOP_SLACK = 5.0


# Garbage collector thresholds for the balancer process. With thousands of
# streams, every object of every stream sits in the oldest generation, and a
# full collection walks them all; the default thresholds ran one during
# nearly every fan-out to 10,000 streams and made it 3x slower
# (bench/streams.py: p50 780 ms against 250 ms). Young generations are
# still collected often; full collections become rare.
GC_THRESHOLDS = (50_000, 20, 100)


async def serve(settings: BalancerSettings) -> None:
    # With --tls-cert, /metrics is HTTPS with the same certificate.
    serve_metrics(settings.metrics_listen, metrics.REGISTRY, settings.tls_cert, settings.tls_key)
    gc.set_threshold(*GC_THRESHOLDS)
    try:
        balancer = BalancerServer.from_settings(settings)
    except (PolicyError, TlsConfigError) as exc:
        raise SystemExit(f"lookaside balancer: {exc}") from None
    await balancer.start()
    GC_HOLD.install()
    keeper = keeper_from_file(balancer.store, settings.state_file, f"state:{balancer.replica_id}")
    await until_signalled()
    log.info("shutting down")
    if keeper is not None:
        await keeper.stop()
    await balancer.stop()
