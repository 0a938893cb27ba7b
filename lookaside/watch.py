"""`lookaside watch POOL --balancer HOST:PORT`: the server list a pool's
clients get, live.

It opens a real BalanceLoad stream, as a stock grpclb client does, and
prints every list the balancer sends: each backend with its token and its
weight (the number of times it is repeated), the drop entries by token, and
fallback responses. Each update is stamped with the time it arrived, and
what changed since the previous one is marked (+ added, - gone, ~ weight
changed; in colour on a terminal).

    lookaside watch routeguide                       # the balancer of the context
    lookaside watch routeguide --balancer 127.0.0.1:50051
    lookaside watch routeguide --balancer b1:50051 --ca ca.pem --count 1 -o json

The balancer and its CA come from --balancer and --ca, else
LOOKASIDE_WATCH_BALANCER and LOOKASIDE_WATCH_CA, else the context that
`lookaside up` wrote (lookaside.context). A pool the balancer does not know
ends the watch with exit status 1, unless --wait asks to wait for it.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import os
import queue
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, TextIO

import grpc

from lookaside_proto.lb.v1 import load_balancer_pb2 as lb
from lookaside_proto.lb.v1 import load_balancer_pb2_grpc as lb_grpc
from server_common.settings import host_port

GREEN, RED, YELLOW, BOLD, RESET = "\033[32m", "\033[31m", "\033[33m", "\033[1m", "\033[0m"


@dataclass(frozen=True)
class Update:
    """One message of the stream, as clients would apply it."""

    at: float  # time.time() when it arrived
    kind: str  # "list", "fallback", "initial", or "unknown" (no such pool)
    # (address, token) -> repetitions; drop token -> slots
    servers: dict[tuple[str, str], int] = field(default_factory=dict)
    drops: dict[str, int] = field(default_factory=dict)
    length: int = 0
    report_interval_s: float = 0.0

    def as_json(self) -> dict[str, Any]:
        return {
            "at": round(self.at, 3),
            "kind": self.kind,
            "length": self.length,
            "servers": [
                {"address": a, "token": t, "weight": n} for (a, t), n in self.servers.items()
            ],
            "drops": self.drops,
            "report_interval_s": self.report_interval_s,
        }


def address_of(server: lb.Server) -> str:
    try:
        ip = ipaddress.ip_address(server.ip_address)
    except ValueError:
        return f"<{len(server.ip_address)}-byte address>:{server.port}"
    return f"[{ip}]:{server.port}" if ip.version == 6 else f"{ip}:{server.port}"


def to_update(reply: lb.LoadBalanceResponse, at: float) -> Update:
    which = reply.WhichOneof("load_balance_response_type")
    if which == "initial_response":
        interval = reply.initial_response.client_stats_report_interval
        return Update(at, "initial", report_interval_s=interval.seconds + interval.nanos / 1e9)
    if which == "fallback_response":
        return Update(at, "fallback")
    servers: Counter[tuple[str, str]] = Counter()
    drops: Counter[str] = Counter()
    for s in reply.server_list.servers:
        if s.drop:
            drops[s.load_balance_token] += 1
        else:
            servers[(address_of(s), s.load_balance_token)] += 1
    return Update(at, "list", dict(servers), dict(drops), length=len(reply.server_list.servers))


def stamp(at: float) -> str:
    t = time.localtime(at)
    return time.strftime("%H:%M:%S", t) + f".{int(at * 1000) % 1000:03d}"


def render(update: Update, previous: Update | None, colour: bool = False) -> str:
    """The lines for one update, with what changed since `previous` marked."""

    def paint(text: str, code: str) -> str:
        return f"{code}{text}{RESET}" if colour else text

    when = paint(stamp(update.at), BOLD)
    if update.kind == "initial":
        return f"{when}  stream open, clients report load every {update.report_interval_s:g} s"
    if update.kind == "fallback":
        return f"{when}  {paint('FALLBACK', YELLOW)}: clients use their fallback backends"
    before = previous.servers if previous is not None and previous.kind == "list" else {}
    backends = len(update.servers)
    lines = [
        f"{when}  list of {update.length} entries: {backends} backend(s)"
        + (f", {sum(update.drops.values())} drop slot(s)" if update.drops else "")
    ]
    by_address_before = {a: n for (a, _), n in before.items()}
    for (address, token), n in sorted(update.servers.items()):
        old = before.get((address, token))
        if old is None and address in by_address_before:
            mark, code = "~", YELLOW  # same backend, new token or epoch
        elif old is None:
            mark, code = "+", GREEN
        elif old != n:
            mark, code = "~", YELLOW
        else:
            mark, code = " ", ""
        text = f"  {mark} {address:<24} weight {n:<4} token {token or '(none)'}"
        lines.append(paint(text, code) if code else text)
    now_addresses = {a for a, _ in update.servers}
    for (address, token), n in sorted(before.items()):
        if address not in now_addresses:
            lines.append(paint(f"  - {address:<24} weight {n:<4} token {token}", RED))
    for token, n in sorted(update.drops.items()):
        lines.append(f"    drop {token:<19} {n} slot(s) of {update.length}")
    if update.length == 0:
        lines.append(paint("    (empty: every call fails)", RED))
    return "\n".join(lines)


def _requests(name: str, stop: threading.Event) -> Iterator[lb.LoadBalanceRequest]:
    yield lb.LoadBalanceRequest(initial_request=lb.InitialLoadBalanceRequest(name=name))
    stop.wait()


def stream_updates(
    balancer: str,
    name: str,
    stop: threading.Event,
    timeout: float | None = None,
    ca: bytes | None = None,
) -> Iterator[Update]:
    """Updates from one BalanceLoad stream until `stop` is set or it ends
    (TLS when `ca`, the PEM roots to trust, is given); after the initial
    one, an "unknown" update when the balancer knows no such pool.
    grpc.RpcError when the stream fails."""
    from balancer_server.balance_load import UNKNOWN_POOL_KEY

    if ca is not None:
        channel = grpc.secure_channel(balancer, grpc.ssl_channel_credentials(ca))
    else:
        channel = grpc.insecure_channel(balancer)
    try:
        stub = lb_grpc.LoadBalancerStub(channel)
        call = stub.BalanceLoad(_requests(name, stop), timeout=timeout)
        stop_watcher = threading.Thread(target=lambda: (stop.wait(), call.cancel()), daemon=True)
        stop_watcher.start()
        try:
            for reply in call:
                update = to_update(reply, time.time())
                yield update
                if update.kind == "initial" and any(
                    key == UNKNOWN_POOL_KEY for key, _ in call.initial_metadata() or ()
                ):
                    yield Update(update.at, "unknown")
        except grpc.RpcError as exc:
            if not stop.is_set():
                raise
            del exc
    finally:
        stop.set()
        channel.close()


def watch(args: argparse.Namespace, out: TextIO) -> int:
    stop = threading.Event()
    colour = args.output == "table" and out.isatty() and not os.environ.get("NO_COLOR")
    name = args.name or args.pool
    ca = getattr(args, "ca_pem", None)
    if args.output == "table":
        print(f"watching {name!r} on {args.balancer} (Ctrl-C ends)", file=out, flush=True)
    previous: Update | None = None
    lists = 0
    updates: queue.Queue[Update | BaseException | None] = queue.Queue()

    def pump() -> None:
        try:
            for update in stream_updates(args.balancer, name, stop, ca=ca):
                updates.put(update)
        except BaseException as exc:  # noqa: BLE001 - handed to the main thread
            updates.put(exc)
        updates.put(None)

    threading.Thread(target=pump, name="watch-stream", daemon=True).start()
    try:
        while True:
            item = updates.get(timeout=args.timeout) if args.timeout else updates.get()
            if item is None:
                return 0
            if isinstance(item, grpc.RpcError):
                code = item.code().name if hasattr(item, "code") else "UNKNOWN"
                details = item.details() if hasattr(item, "details") else str(item)
                hint = ""
                if "CERTIFICATE_VERIFY_FAILED" in details or "handshake" in details.lower():
                    hint = "; give the balancer's CA with --ca (env LOOKASIDE_WATCH_CA)"
                print(f"lookaside watch: stream ended: {code}: {details}{hint}", file=sys.stderr)
                return 1
            if isinstance(item, BaseException):
                raise item
            if item.kind == "unknown":
                where = f"pool {name!r} does not exist on {args.balancer}"
                if not getattr(args, "wait", False):
                    print(
                        f"lookaside watch: {where}; `lookaside ctl pools` lists the pools, "
                        "and --wait waits for this one to be created",
                        file=sys.stderr,
                    )
                    return 1
                if args.output == "table":
                    print(f"{where} yet; waiting for it", file=out, flush=True)
                continue
            if args.output == "json":
                print(json.dumps(item.as_json()), file=out, flush=True)
            else:
                print(render(item, previous, colour), file=out, flush=True)
            if item.kind != "initial":
                previous = item
                lists += 1
                if args.count and lists >= args.count:
                    return 0
    except queue.Empty:
        print(
            f"lookaside watch: nothing from {args.balancer} for {args.timeout:g} s", file=sys.stderr
        )
        return 1
    except KeyboardInterrupt:
        return 0
    finally:
        stop.set()


def resolve(args: argparse.Namespace) -> None:
    """Fills args.balancer and args.ca_pem from the flags, their variables,
    else the context (whose CA goes only to its own balancer); ValueError
    with the one line to print."""
    from lookaside import context as ctx

    balancer = args.balancer or os.environ.get("LOOKASIDE_WATCH_BALANCER", "").strip()
    ca = args.ca or os.environ.get("LOOKASIDE_WATCH_CA", "").strip()
    ca_from = "--ca" if args.ca else "env LOOKASIDE_WATCH_CA"
    context = ctx.load()
    if context is not None and context.balancer and balancer in ("", context.balancer):
        balancer = context.balancer
        if not ca and context.ca:
            ca, ca_from = context.ca, f"the CA of {context.describe()}"
    if not balancer:
        raise ValueError(ctx.missing("balancer", "--balancer", "LOOKASIDE_WATCH_BALANCER"))
    args.balancer = host_port(balancer, "balancer")
    args.ca_pem = None
    if ca:
        try:
            with open(ca, "rb") as f:
                args.ca_pem = f.read()
        except OSError as exc:
            raise ValueError(f"{ca_from} {ca!r} cannot be read: {exc.strerror}") from None


def run(args: argparse.Namespace) -> int:
    try:
        resolve(args)
    except ValueError as exc:
        print(f"lookaside watch: {exc}", file=sys.stderr)
        return 2
    return watch(args, sys.stdout)


def add_subcommand(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "watch",
        help="show live the server list a pool's clients get",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("pool", help="the pool (or service name) to ask the balancer for")
    p.add_argument(
        "--balancer", help="balancer host:port [env LOOKASIDE_WATCH_BALANCER, else the context]"
    )
    p.add_argument(
        "--ca",
        help="PEM CA bundle: talk TLS to the balancer, trusting it "
        "[env LOOKASIDE_WATCH_CA, else the context]",
    )
    p.add_argument("--wait", action="store_true", help="wait for a pool that does not exist yet")
    p.add_argument("--name", default="", help="the name sent in the initial request; default POOL")
    p.add_argument("--count", type=int, default=0, help="exit after this many lists (0: never)")
    p.add_argument(
        "--timeout", type=float, default=0.0, help="exit 1 after this many seconds of silence"
    )
    p.add_argument("-o", "--output", choices=("table", "json"), default="table")
    p.set_defaults(func=run)
