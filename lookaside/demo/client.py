"""The routeguide demo client (`lookaside routeguide client`).

It makes routeguide calls through one of three channels and prints which
server answered each call (the x-served-by header, read from the initial
metadata on success and on error), then a table of calls per server:

    --lb lookaside     client_lib.LookasideChannel(--target, --balancer)
    --lb grpclb-dns    a stock grpcio channel, grpclb found through DNS SRV
    --lb xds           a stock grpcio channel on xds:///POOL, its xDS server the
                       first --balancer (a bootstrap made from it and the TLS
                       flags, unless GRPC_XDS_BOOTSTRAP(_CONFIG) names one)
    --lb none          a plain channel to --server: every call lands there
"""

from __future__ import annotations

import json
import os
import random
import signal
import sys
import threading
import time
from collections.abc import Callable
from typing import Any, TextIO

import grpc
import grpc.experimental
from google.protobuf import text_format

from client_lib import LookasideChannel
from lookaside.demo.features import FeatureDb, load_db
from lookaside.demo.interceptor import SERVED_BY
from lookaside.demo.report import NO_SERVER, OK, CallResult, Tally, format_line, summary_table
from lookaside.demo.settings import APIS, ClientSettings, read_bytes
from lookaside.xds_bootstrap import bootstrap
from lookaside_proto.routeguide.v1 import route_guide_pb2 as rg
from lookaside_proto.routeguide.v1 import route_guide_pb2_grpc as rg_grpc

GRPCLB_SERVICE_CONFIG = '{"loadBalancingConfig":[{"grpclb":{}}]}'


def make_channel(settings: ClientSettings) -> grpc.Channel:
    """The channel for settings.lb (TLS with --tls-ca). ValueError when a
    needed flag is missing or a PEM file cannot be read."""
    creds = channel_credentials(settings)
    if settings.lb == "lookaside":
        return LookasideChannel(
            settings.target, settings.balancers, credentials=creds, balancer_credentials=creds,
            server_name_override=settings.server_name or None,
        )  # fmt: skip
    if settings.lb == "xds":
        use_bootstrap(settings)
        # xDS credentials: TLS to the backends as the Cluster says (a
        # balancer with --backend-tls-ca), else these credentials.
        fallback = creds if creds is not None else grpc.experimental.insecure_channel_credentials()
        xds_options: list[tuple[str, Any]] = []
        if settings.server_name:
            xds_options.append(("grpc.ssl_target_name_override", settings.server_name))
        return grpc.secure_channel(
            xds_target(settings), grpc.xds_channel_credentials(fallback), options=xds_options
        )
    if settings.lb == "grpclb-dns":
        target = f"dns://{settings.dns}/{settings.target}"
        options = [
            ("grpc.dns_enable_srv_queries", 1),
            ("grpc.service_config", GRPCLB_SERVICE_CONFIG),
        ]
    else:
        if not settings.server:
            raise ValueError("--lb none needs --server host:port (the one server to call)")
        target, options = settings.server, []
    if creds is not None:
        if settings.server_name:
            options.append(("grpc.ssl_target_name_override", settings.server_name))
        return grpc.secure_channel(target, creds, options=options)
    return grpc.insecure_channel(target, options=options)


def xds_target(settings: ClientSettings) -> str:
    """xds:///POOL: --target as given when it is an xds: URI, else its first
    DNS label without the port (the pool a grpclb stream for it is bound to)."""
    if settings.target.startswith("xds:"):
        return settings.target
    host = settings.target.rsplit(":", 1)[0] if ":" in settings.target else settings.target
    return f"xds:///{host.split('.', 1)[0]}"


def use_bootstrap(settings: ClientSettings) -> None:
    """Points gRPC's xDS client at the first --balancer (TLS and mTLS from
    the client's TLS flags), unless the environment already names a
    bootstrap. gRPC reads it when the first xds: channel is made. The same
    CA (and client certificate) serve for TLS backends: the certificate
    provider instances a balancer with --backend-tls-ca names in its
    Clusters."""
    if os.environ.get("GRPC_XDS_BOOTSTRAP") or os.environ.get("GRPC_XDS_BOOTSTRAP_CONFIG"):
        return
    doc = bootstrap(
        settings.balancers[0],
        node_id=f"routeguide-client-{os.getpid()}",
        ca=settings.tls_ca,
        cert=settings.tls_cert,
        key=settings.tls_key,
        backend_ca=settings.tls_ca,
        backend_cert=settings.tls_cert,
        backend_key=settings.tls_key,
    )
    os.environ["GRPC_XDS_BOOTSTRAP_CONFIG"] = json.dumps(doc)


def channel_credentials(settings: ClientSettings) -> grpc.ChannelCredentials | None:
    """TLS credentials from --tls-ca (and --tls-cert/--tls-key for mTLS), or None."""
    if not settings.tls_ca:
        return None
    key = read_bytes(settings.tls_key, "TLS key") if settings.tls_key else None
    cert = read_bytes(settings.tls_cert, "TLS cert") if settings.tls_cert else None
    return grpc.ssl_channel_credentials(read_bytes(settings.tls_ca, "TLS CA"), key, cert)


def served_by(call: Any) -> str:
    """The x-served-by header of a call or RpcError, or NO_SERVER."""
    try:
        metadata = call.initial_metadata() or ()
    except Exception:  # noqa: BLE001 - errors raised before a call existed have none
        return NO_SERVER
    for key, value in metadata:
        if key == SERVED_BY:
            return value.decode() if isinstance(value, bytes) else str(value)
    return NO_SERVER


def _text(message: Any) -> str:
    return text_format.MessageToString(message, as_one_line=True)


class Requests:
    """Request messages drawn from the features db (and a few points off it)."""

    def __init__(self, db: FeatureDb, rng: random.Random) -> None:
        self.places = list(db) or None
        self.rng = rng

    def point(self) -> rg.Point:
        if self.places and self.rng.random() < 0.8:
            p = self.rng.choice(self.places)
            return rg.Point(latitude=p.latitude, longitude=p.longitude)
        return rg.Point(
            latitude=self.rng.randint(400_000_000, 415_000_000),
            longitude=self.rng.randint(-750_000_000, -735_000_000),
        )

    def rectangle(self) -> rg.Rectangle:
        centre = self.point()
        half = self.rng.randint(500_000, 3_000_000)  # 0.05 to 0.3 degrees
        return rg.Rectangle(
            lo=rg.Point(latitude=centre.latitude - half, longitude=centre.longitude - half),
            hi=rg.Point(latitude=centre.latitude + half, longitude=centre.longitude + half),
        )

    def route(self) -> list[rg.Point]:
        return [self.point() for _ in range(self.rng.randint(2, 10))]

    def notes(self) -> list[rg.RouteNote]:
        spots = [self.point() for _ in range(2)]
        return [
            rg.RouteNote(location=spots[i % 2], message=f"note {i} from the demo client")
            for i in range(4)
        ]


def call_api(
    stub: rg_grpc.RouteGuideStub, api: str, requests: Requests, timeout: float
) -> CallResult:
    """Makes one call and describes it; never raises grpc.RpcError."""
    try:
        if api == "GetFeature":
            feature, call = stub.GetFeature.with_call(requests.point(), timeout=timeout)
            return CallResult(api, served_by(call), OK, _text(feature))
        if api == "ListFeatures":
            stream = stub.ListFeatures(requests.rectangle(), timeout=timeout)
            features = list(stream)
            first = f', first: "{features[0].name}"' if features else ""
            return CallResult(api, served_by(stream), OK, f"{len(features)} features{first}")
        if api == "RecordRoute":
            summary, call = stub.RecordRoute.with_call(iter(requests.route()), timeout=timeout)
            return CallResult(api, served_by(call), OK, _text(summary))
        if api == "RouteChat":
            notes = requests.notes()
            stream = stub.RouteChat(iter(notes), timeout=timeout)
            received = list(stream)
            return CallResult(
                api,
                served_by(stream),
                OK,
                f"{len(notes)} notes sent, {len(received)} earlier notes received",
            )
    except grpc.RpcError as exc:
        code = exc.code() if hasattr(exc, "code") else grpc.StatusCode.UNKNOWN
        details = exc.details() if hasattr(exc, "details") else str(exc)
        return CallResult(api, served_by(exc), code.name, details or "")
    raise ValueError(f"unknown api {api!r}; expected one of {', '.join(APIS)}")


def _describe(settings: ClientSettings) -> str:
    if settings.lb == "lookaside":
        via = f"{settings.target} via balancer {settings.balancer}"
    if settings.lb == "grpclb-dns":
        via = f"dns://{settings.dns}/{settings.target} (grpclb)"
    elif settings.lb == "xds":
        via = f"{xds_target(settings)} via xDS server {settings.balancers[0]}"
    else:
        via = settings.server
    if settings.mode == "repeatn":
        what = f"repeatn {settings.n} x {settings.api}"
    elif settings.duration:
        what = f"firehose for {settings.duration:g} s"
    else:
        what = "firehose until Ctrl-C"
    return (
        f"routeguide client --lb {settings.lb}: {via}; {what}, concurrency {settings.concurrency}"
    )


def run(settings: ClientSettings, out: TextIO | None = None, db: FeatureDb | None = None) -> Tally:
    """Runs the client and prints per-call lines and the summary to out.
    Ctrl-C or SIGTERM (in the main thread) ends it early, summary included."""
    out = out if out is not None else sys.stdout
    db = db if db is not None else load_db()
    channel = make_channel(settings)
    tally = Tally()
    stop = threading.Event()
    print_lock = threading.Lock()
    stub = rg_grpc.RouteGuideStub(channel)
    base_seed = settings.seed if settings.seed is not None else random.randrange(2**32)

    def record(result: CallResult) -> None:
        tally.add(result)
        if not settings.quiet:
            with print_lock:
                print(format_line(result), file=out, flush=True)

    if settings.mode == "repeatn":
        counter = iter(range(settings.n))
        counter_lock = threading.Lock()

        def next_api(rng: random.Random) -> str | None:
            with counter_lock:
                return settings.api if next(counter, None) is not None else None

    else:
        deadline = time.monotonic() + settings.duration if settings.duration else None

        def next_api(rng: random.Random) -> str | None:
            if deadline is not None and time.monotonic() >= deadline:
                return None
            return rng.choice(APIS)

    def worker(index: int) -> None:
        rng = random.Random(base_seed + index)
        requests = Requests(db, rng)
        while not stop.is_set():
            api = next_api(rng)
            if api is None:
                return
            record(call_api(stub, api, requests, settings.timeout))

    workers = [
        threading.Thread(target=worker, args=(i,), name=f"routeguide-client-{i}", daemon=True)
        for i in range(settings.concurrency)
    ]
    restore = _stop_on_signals(stop)
    try:
        print(_describe(settings), file=out, flush=True)
        if isinstance(channel, LookasideChannel):
            _wait_for_list(channel, settings, stop)
        for t in workers:
            t.start()
        _join(workers)
    except KeyboardInterrupt:
        pass  # a second Ctrl-C: do not wait for calls in flight
    finally:
        restore()
        channel.close()
        print(summary_table(tally), file=out, flush=True)
    return tally


def _wait_for_list(
    channel: LookasideChannel, settings: ClientSettings, stop: threading.Event
) -> None:
    """Waits (at most --timeout, less on Ctrl-C) for the balancer's first
    list and for every listed backend to be connected (or found down), so
    the demo's first calls spread over all of them."""
    deadline = time.monotonic() + settings.timeout
    settled = (grpc.ChannelConnectivity.READY, grpc.ChannelConnectivity.TRANSIENT_FAILURE)
    while not stop.is_set() and time.monotonic() < deadline:
        if channel.wait_for_list(0.1):
            while not stop.is_set() and time.monotonic() < deadline:
                if all(s in settled for s in channel.backend_states().values()):
                    return
                time.sleep(0.01)
            return
    if not stop.is_set():
        print(
            f"routeguide client: no server list from {settings.balancer} for "
            f"{settings.target!r} within {settings.timeout:g} s; calls will fail",
            file=sys.stderr,
            flush=True,
        )


def _join(threads: list[threading.Thread]) -> None:
    """Joins in short steps so that signal handlers run in the main thread."""
    for t in threads:
        while t.is_alive():
            t.join(0.2)


def _stop_on_signals(stop: threading.Event) -> Callable[[], None]:
    """Ctrl-C or SIGTERM sets stop: the workers end after their current
    call and the summary is printed. A second one raises KeyboardInterrupt.
    Returns the undo. Signals can only be handled in the main thread."""
    if threading.current_thread() is not threading.main_thread():
        return lambda: None

    def handler(signum: int, frame: Any) -> None:
        if stop.is_set():
            raise KeyboardInterrupt
        stop.set()

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}

    def restore() -> None:
        for sig, prev in previous.items():
            signal.signal(sig, prev)

    return restore
