"""One load client of the chaos suite, as its own process: a steady rate of
GetFeature calls from one client kind, one line per finished call in a file:

    <CLOCK_MONOTONIC seconds> <OK or the status code name>

    python -m lookaside.chaos.load --kind thin-sync --out calls.txt \\
        --pool chaos --balancers 127.0.0.1:1,127.0.0.1:2 --rate 100

Kinds: thin-sync (client_lib.LookasideChannel), thin-aio
(client_lib.aio.LookasideAioChannel), grpcio-dns (a stock grpcio channel,
grpclb found through the DNS responder's SRV records). It prints "ready"
after its first successful call and stops on SIGTERM, flushing the file.
CLOCK_MONOTONIC is one clock for every process of the machine, so the
suite can cut the file into the windows of its faults.

Every kind is configured as a user who wants no call lost would configure
it: GetFeature is idempotent, so it has a gRFC A6 retryPolicy (3 attempts,
UNAVAILABLE) in the channel's grpc.service_config, the same option for the
thin channels and the stock one. A call already on a backend's connection
when the backend dies is then retried instead of lost. `--no-retries`
leaves the policy out.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys
import threading
import time
from typing import Any

import grpc

from lookaside_proto.routeguide.v1 import route_guide_pb2 as rg
from lookaside_proto.routeguide.v1 import route_guide_pb2_grpc as rg_grpc

KINDS = ("thin-sync", "thin-aio", "grpcio-dns")
POINT = rg.Point(latitude=409146138, longitude=-746188906)
GRPCLB: dict[str, Any] = {"loadBalancingConfig": [{"grpclb": {}}]}
RETRY_POLICY: dict[str, Any] = {
    "name": [{"service": "routeguide.RouteGuide", "method": "GetFeature"}],
    "retryPolicy": {
        "maxAttempts": 3,
        "initialBackoff": "0.05s",
        "maxBackoff": "0.5s",
        "backoffMultiplier": 2,
        "retryableStatusCodes": ["UNAVAILABLE"],
    },
}


def service_config(retries: bool, grpclb: bool = False) -> list[tuple[str, str]]:
    """The grpc.service_config option of a client channel (none if empty)."""
    config: dict[str, Any] = dict(GRPCLB) if grpclb else {}
    if retries:
        config["methodConfig"] = [RETRY_POLICY]
    return [("grpc.service_config", json.dumps(config))] if config else []


class Recorder:
    """Finished calls, appended to the file by one flusher thread."""

    def __init__(self, path: str) -> None:
        self.file = open(path, "a", buffering=1 << 16)  # noqa: SIM115 - closed in close()
        self.lines: list[str] = []
        self.lock = threading.Lock()
        self.ready = threading.Event()
        self.stop = threading.Event()
        self._flusher = threading.Thread(target=self._flush_forever, daemon=True)
        self._flusher.start()

    def record(self, code: str) -> None:
        line = f"{time.monotonic():.6f} {code}\n"
        with self.lock:
            self.lines.append(line)
        if code == "OK" and not self.ready.is_set():
            self.ready.set()
            print("ready", flush=True)

    def flush(self) -> None:
        with self.lock:
            lines, self.lines = self.lines, []
        self.file.writelines(lines)
        self.file.flush()

    def _flush_forever(self) -> None:
        while not self.stop.wait(0.2):
            self.flush()

    def close(self) -> None:
        self.stop.set()
        self._flusher.join()
        self.flush()
        self.file.close()


def _code(exc: grpc.RpcError) -> str:
    code = exc.code() if hasattr(exc, "code") else None
    return code.name if code is not None else type(exc).__name__


def credentials(args: argparse.Namespace) -> grpc.ChannelCredentials | None:
    """TLS verified with --tls-ca (one credential for balancers and backends)."""
    if not args.tls_ca:
        return None
    with open(args.tls_ca, "rb") as f:
        return grpc.ssl_channel_credentials(f.read())


def run_sync(args: argparse.Namespace, rec: Recorder) -> None:
    channel: Any
    creds = credentials(args)
    if args.kind == "thin-sync":
        from client_lib import LookasideChannel

        channel = LookasideChannel(
            args.pool, args.balancers.split(","), options=service_config(args.retries),
            credentials=creds, balancer_credentials=creds,
        )  # fmt: skip
    else:
        target = f"dns://{args.dns}/{args.target}"
        options = [("grpc.dns_enable_srv_queries", 1), *service_config(args.retries, grpclb=True)]
        channel = (
            grpc.secure_channel(target, creds, options=options)
            if creds is not None
            else grpc.insecure_channel(target, options=options)
        )
    stub = rg_grpc.RouteGuideStub(channel)
    interval = args.concurrency / args.rate

    def worker(i: int) -> None:
        next_at = time.monotonic() + interval * i / args.concurrency
        while not rec.stop.is_set():
            try:
                stub.GetFeature(POINT, timeout=args.timeout, wait_for_ready=not rec.ready.is_set())
                rec.record("OK")
            except grpc.RpcError as exc:
                if rec.ready.is_set():
                    rec.record(_code(exc))
            next_at += interval
            delay = next_at - time.monotonic()
            if delay > 0:
                rec.stop.wait(delay)
            else:
                next_at = time.monotonic()

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(args.concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    channel.close()


async def run_aio(args: argparse.Namespace, rec: Recorder) -> None:
    from client_lib.aio import LookasideAioChannel

    creds = credentials(args)
    channel = LookasideAioChannel(
        args.pool, args.balancers.split(","), options=service_config(args.retries),
        credentials=creds, balancer_credentials=creds,
    )  # fmt: skip
    await asyncio.wait_for(channel.channel_ready(), 60)
    stub = rg_grpc.RouteGuideStub(channel)
    interval = args.concurrency / args.rate
    stopped = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stopped.set)
    loop.add_signal_handler(signal.SIGINT, stopped.set)

    async def worker(i: int) -> None:
        next_at = time.monotonic() + interval * i / args.concurrency
        while not stopped.is_set():
            try:
                await stub.GetFeature(POINT, timeout=args.timeout)
                rec.record("OK")
            except grpc.RpcError as exc:
                if rec.ready.is_set():
                    rec.record(_code(exc))
            next_at += interval
            delay = next_at - time.monotonic()
            if delay > 0:
                try:
                    await asyncio.wait_for(stopped.wait(), delay)
                except TimeoutError:
                    pass
            else:
                next_at = time.monotonic()

    await asyncio.gather(*(worker(i) for i in range(args.concurrency)))
    await channel.close()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--kind", choices=KINDS, required=True)
    p.add_argument("--out", required=True, help="file the finished calls are appended to")
    p.add_argument("--pool", default="chaos")
    p.add_argument("--balancers", default="", help="host:port,host:port (thin clients)")
    p.add_argument("--dns", default="", help="DNS responder host:port (grpcio-dns)")
    p.add_argument("--target", default="", help="name:port to resolve (grpcio-dns)")
    p.add_argument("--rate", type=float, default=100.0, help="calls per second")
    p.add_argument("--concurrency", type=int, default=4, help="calls in flight at most")
    p.add_argument("--timeout", type=float, default=2.0, help="deadline of each call, seconds")
    p.add_argument(
        "--no-retries",
        dest="retries",
        action="store_false",
        help="no retryPolicy for GetFeature (a call in flight on a dying backend is lost)",
    )
    p.add_argument("--tls-ca", default="", help="PEM CA: TLS to balancers and backends")
    args = p.parse_args(argv)
    rec = Recorder(args.out)
    try:
        if args.kind == "thin-aio":
            asyncio.run(run_aio(args, rec))
        else:
            signal.signal(signal.SIGTERM, lambda *_: rec.stop.set())
            signal.signal(signal.SIGINT, lambda *_: rec.stop.set())
            run_sync(args, rec)
    finally:
        rec.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
