"""`lookaside health-probe TARGET`: exit 0 when TARGET is healthy, 1 when not.

    lookaside health-probe 127.0.0.1:50051            # grpc.health.v1 Check, SERVING?
    lookaside health-probe 127.0.0.1:50051 --service lookaside.registry.v1.Registry
    lookaside health-probe http://127.0.0.1:8080/readyz   # HTTP GET answers 2xx?

For container HEALTHCHECKs and Kubernetes exec probes: one short call with a
deadline, the outcome on one line, no retries (the orchestrator retries).
"""

from __future__ import annotations

import argparse
import sys
import urllib.error
import urllib.request
from typing import Any

from lookaside.settings import host_port


def probe_grpc(target: str, service: str, timeout: float) -> tuple[bool, str]:
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    with grpc.insecure_channel(target) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        try:
            reply = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=timeout)
        except grpc.RpcError as exc:
            code = exc.code().name if hasattr(exc, "code") else "UNKNOWN"
            return False, f"{target}: {code}: {exc.details() if hasattr(exc, 'details') else exc}"
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
    return reply.status == health_pb2.HealthCheckResponse.SERVING, f"{target}: {status}"


def probe_http(url: str, timeout: float) -> tuple[bool, str]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as reply:  # noqa: S310 - operator's URL
            return 200 <= reply.status < 300, f"{url}: HTTP {reply.status}"
    except urllib.error.HTTPError as exc:
        return False, f"{url}: HTTP {exc.code}"
    except (urllib.error.URLError, OSError) as exc:
        return False, f"{url}: {getattr(exc, 'reason', exc)}"


def run(args: argparse.Namespace) -> int:
    target: str = args.target
    if target.startswith(("http://", "https://")):
        ok, line = probe_http(target, args.timeout)
    else:
        try:
            host_port(target, "target")
        except ValueError as exc:
            print(f"lookaside health-probe: {exc}", file=sys.stderr)
            return 2
        ok, line = probe_grpc(target, args.service, args.timeout)
    print(("healthy " if ok else "unhealthy ") + line, file=sys.stdout if ok else sys.stderr)
    return 0 if ok else 1


def add_subcommand(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "health-probe",
        help="exit 0 when a gRPC server reports SERVING (or an HTTP URL answers 2xx)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("target", help="HOST:PORT of a gRPC server, or an http(s):// URL")
    p.add_argument("--service", default="", help="the health service name; default the server")
    p.add_argument("--timeout", type=float, default=2.0, help="seconds to wait (default 2)")
    p.set_defaults(func=run)
