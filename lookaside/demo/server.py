"""The routeguide demo server (`lookaside routeguide server`).

A grpc.aio server with the 4 routeguide RPCs over the features db, health,
reflection, and the FaultInterceptor (x-served-by, delays, faults), over
plaintext or TLS (--tls-cert/--tls-key, mTLS with --tls-client-ca). With
--balancer it registers itself in a pool (waiting for the balancer if it
is not up yet; --registration-token is sent with every registration call),
and on SIGTERM or Ctrl-C it deregisters first and stops serving after.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import sys
import time
from collections import defaultdict, deque
from collections.abc import AsyncIterator

import grpc
import grpc.aio
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from client_lib import AsyncRegistration, LoadMeter, RegistrationRefused
from lookaside.demo.features import FeatureDb, LatLng, haversine_m, load_db
from lookaside.demo.interceptor import FaultInterceptor
from lookaside.demo.settings import ServerSettings, read_bytes
from lookaside_proto.routeguide.v1 import route_guide_pb2 as rg
from lookaside_proto.routeguide.v1 import route_guide_pb2_grpc as rg_grpc
from lookaside_registry.asyncutil import stop_requested
from server_common.settings import check_key_pair

log = logging.getLogger("lookaside.demo.server")

SERVICE = rg.DESCRIPTOR.services_by_name["RouteGuide"].full_name
NOTES_PER_LOCATION = 100  # RouteChat keeps this many notes per location


def _loc(point: rg.Point) -> LatLng:
    return (point.latitude, point.longitude)


class RouteGuideService(rg_grpc.RouteGuideServicer):
    """The 4 RPCs of the grpc routeguide example, over a FeatureDb."""

    def __init__(self, db: FeatureDb) -> None:
        self.db = db
        # Bounded, so a firehose cannot grow the server without limit.
        self.notes: defaultdict[LatLng, deque[rg.RouteNote]] = defaultdict(
            lambda: deque(maxlen=NOTES_PER_LOCATION)
        )

    def _feature(self, point: rg.Point) -> rg.Feature:
        place = self.db.at(_loc(point))
        return rg.Feature(name=place.name if place else "", location=point)

    async def GetFeature(self, request: rg.Point, context: grpc.aio.ServicerContext) -> rg.Feature:  # noqa: N802
        return self._feature(request)

    async def ListFeatures(  # noqa: N802
        self, request: rg.Rectangle, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[rg.Feature]:
        for place in self.db.within(_loc(request.lo), _loc(request.hi)):
            yield rg.Feature(
                name=place.name,
                location=rg.Point(latitude=place.latitude, longitude=place.longitude),
            )

    async def RecordRoute(  # noqa: N802
        self, request_iterator: AsyncIterator[rg.Point], context: grpc.aio.ServicerContext
    ) -> rg.RouteSummary:
        points = features = 0
        distance = 0.0
        previous: LatLng | None = None
        start = time.monotonic()
        async for point in request_iterator:
            points += 1
            place = self.db.at(_loc(point))
            if place is not None and place.name:
                features += 1
            if previous is not None:
                distance += haversine_m(previous, _loc(point))
            previous = _loc(point)
        return rg.RouteSummary(
            point_count=points,
            feature_count=features,
            distance=int(distance),
            elapsed_time=int(time.monotonic() - start),
        )

    async def RouteChat(  # noqa: N802
        self, request_iterator: AsyncIterator[rg.RouteNote], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[rg.RouteNote]:
        async for note in request_iterator:
            earlier = self.notes[_loc(note.location)]
            for prev in list(earlier):
                yield prev
            earlier.append(note)


class RouteGuideServer:
    """The demo server's gRPC parts: start() binds and serves, stop() ends."""

    def __init__(self, settings: ServerSettings, db: FeatureDb | None = None) -> None:
        self.settings = settings
        self.db = db if db is not None else load_db(settings.db or None)
        self.service = RouteGuideService(self.db)
        self.interceptor = FaultInterceptor(
            settings.name,
            fault_rate=settings.fault_percent,
            delay_ms=settings.delay_ms,
            blackhole_rate=settings.blackhole_percent,
            seed=settings.fault_seed,
            guarded=(SERVICE,),
        )
        self.health = health.aio.HealthServicer()
        # Measures every call (outermost, so injected delays count) for the
        # load figures that heartbeats carry.
        self.meter = LoadMeter()
        self.server: grpc.aio.Server | None = None  # kept: a collected server stops
        self.port = 0
        self.name = settings.name

    @property
    def address(self) -> str:
        host = self.settings.listen.rpartition(":")[0]
        return f"{host}:{self.port}"

    async def start(self) -> int:
        server = grpc.aio.server(interceptors=(self.meter.aio_interceptor(), self.interceptor))
        rg_grpc.add_RouteGuideServicer_to_server(self.service, server)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, server)
        names = (
            SERVICE,
            health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
            reflection.SERVICE_NAME,
        )
        reflection.enable_server_reflection(names, server)
        try:
            credentials = server_credentials(self.settings)
            if credentials is None:
                self.port = server.add_insecure_port(self.settings.listen)
            else:
                self.port = server.add_secure_port(self.settings.listen, credentials)
        except RuntimeError as exc:
            raise OSError(f"cannot listen on {self.settings.listen}: {exc}") from None
        if self.port == 0:
            raise OSError(f"cannot listen on {self.settings.listen}")
        self.name = self.settings.name or f"{socket.gethostname()}:{self.port}"
        self.interceptor.name = self.name
        await server.start()
        self.server = server
        for service in ("", SERVICE):
            await self.health.set(service, health_pb2.HealthCheckResponse.SERVING)
        return self.port

    async def stop(self, grace: float | None = None) -> None:
        await self.health.enter_graceful_shutdown()
        if self.server is not None:
            await self.server.stop(self.settings.grace if grace is None else grace)


def banner(server: RouteGuideServer) -> str:
    s = server.settings
    where = f"pool {s.pool} via {s.balancer}" if s.balancers else "no balancer"
    extras = []
    if s.fault_percent:
        extras.append(f"faults {s.fault_percent:g}")
    if s.delay_ms:
        extras.append(f"delay {s.delay_ms} ms")
    tail = f", {', '.join(extras)}" if extras else ""
    return f"routeguide server {server.address} serving ({where}{tail}) as {server.name}"


def server_credentials(settings: ServerSettings) -> grpc.ServerCredentials | None:
    """TLS (mTLS with --tls-client-ca) from the PEM files, or None."""
    if not settings.tls_cert:
        return None
    pair = (read_bytes(settings.tls_key, "TLS key"), read_bytes(settings.tls_cert, "TLS cert"))
    check_key_pair(settings.tls_cert, settings.tls_key)
    client_ca = read_bytes(settings.tls_client_ca, "client CA") if settings.tls_client_ca else None
    return grpc.ssl_server_credentials(
        [pair], root_certificates=client_ca, require_client_auth=client_ca is not None
    )


def make_registration(settings: ServerSettings, server: RouteGuideServer) -> AsyncRegistration:
    ca = settings.balancer_tls_ca
    return AsyncRegistration(
        settings.balancers,
        settings.pool,
        server.port,
        host=settings.advertise_host,
        weight=settings.weight,
        metadata={"served_by": server.name},
        meter=server.meter,
        health=server.health,  # NOT_SERVING from the start of the drain
        token=settings.token(),
        credentials=grpc.ssl_channel_credentials(read_bytes(ca, "balancer CA")) if ca else None,
    )


async def serve(settings: ServerSettings) -> int:
    """Runs until SIGTERM or SIGINT; returns the process exit code. With a
    balancer it serves at once and registers as soon as a balancer answers
    (retrying with backoff for as long as it takes)."""
    stop = stop_requested()  # from here on SIGTERM and Ctrl-C stop in order
    server = RouteGuideServer(settings)
    await server.start()
    registration: AsyncRegistration | None = None
    signalled = asyncio.create_task(stop.wait())
    if settings.balancers:
        registration = make_registration(settings, server)
        registering = asyncio.create_task(registration.start())
        await asyncio.wait({registering, signalled}, return_when=asyncio.FIRST_COMPLETED)
        if not registering.done():  # stopped before any balancer answered
            registering.cancel()
            await asyncio.gather(registering, return_exceptions=True)
            await registration.stop(drain=False)
            await server.stop()
            return 0
        try:
            registering.result()
        except RegistrationRefused as exc:
            print(
                f"routeguide server: registration in pool {settings.pool!r} via "
                f"{settings.balancer} refused: {exc.code().name}: {exc.details()}",
                file=sys.stderr,
                flush=True,
            )
            signalled.cancel()
            await server.stop(0)
            return 1
    print(banner(server), flush=True)
    await signalled
    log.info("shutting down server=%s pool=%s", server.name, settings.pool)
    if registration is not None:
        # Drain (out of every list, lease kept), let in-flight calls end,
        # deregister; only then stop serving.
        await registration.stop()
        log.info("left pool=%s backend=%s", settings.pool, registration.backend_id)
    await server.stop()
    log.info("stopped server=%s", server.name)
    return 0
