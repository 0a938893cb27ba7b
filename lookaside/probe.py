"""`lookaside health-probe TARGET`: exit 0 when TARGET is healthy, 1 when not.

    lookaside health-probe 127.0.0.1:50051            # grpc.health.v1 Check, SERVING?
    lookaside health-probe 127.0.0.1:50051 --service lookaside.registry.v1.Registry
    lookaside health-probe http://127.0.0.1:8080/readyz   # HTTP GET answers 2xx?
    lookaside health-probe 127.0.0.1:50051 --tls-ca ca.pem   # the same over TLS
    lookaside health-probe https://127.0.0.1:8080/readyz --tls-ca ca.pem

--tls-ca makes the probe use TLS verified with that CA (for a gRPC target;
an https:// URL uses it instead of the system's roots); --tls-cert and
--tls-key add a client certificate for servers that require mTLS;
--server-name is the name the certificate is checked against (default the
target's host).

For container HEALTHCHECKs and Kubernetes exec probes: one short call with a
deadline, the outcome on one line, no retries (the orchestrator retries).
"""

from __future__ import annotations

import argparse
import sys
import urllib.error
import urllib.request
from typing import Any

from server_common.settings import host_port


def _read(path: str, what: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as exc:
        raise ValueError(f"{what} {path!r} cannot be read: {exc.strerror}") from None


def grpc_channel(args: argparse.Namespace) -> Any:
    """A plaintext channel, or TLS (mTLS) with --tls-ca (--tls-cert/--tls-key)."""
    import grpc

    if not args.tls_ca:
        return grpc.insecure_channel(args.target)
    creds = grpc.ssl_channel_credentials(
        _read(args.tls_ca, "--tls-ca"),
        _read(args.tls_key, "--tls-key") if args.tls_key else None,
        _read(args.tls_cert, "--tls-cert") if args.tls_cert else None,
    )
    options = [("grpc.ssl_target_name_override", args.server_name)] if args.server_name else []
    return grpc.secure_channel(args.target, creds, options=options)


def probe_grpc(args: argparse.Namespace) -> tuple[bool, str]:
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    target, service, timeout = args.target, args.service, args.timeout
    with grpc_channel(args) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        try:
            reply = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=timeout)
        except grpc.RpcError as exc:
            code = exc.code().name if hasattr(exc, "code") else "UNKNOWN"
            return False, f"{target}: {code}: {exc.details() if hasattr(exc, 'details') else exc}"
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
    return reply.status == health_pb2.HealthCheckResponse.SERVING, f"{target}: {status}"


def probe_http(url: str, timeout: float, ca: str = "") -> tuple[bool, str]:
    import ssl

    context = ssl.create_default_context(cafile=ca or None) if url.startswith("https") else None
    try:
        with urllib.request.urlopen(url, timeout=timeout, context=context) as reply:  # noqa: S310
            return 200 <= reply.status < 300, f"{url}: HTTP {reply.status}"
    except urllib.error.HTTPError as exc:
        return False, f"{url}: HTTP {exc.code}"
    except (urllib.error.URLError, OSError) as exc:
        return False, f"{url}: {getattr(exc, 'reason', exc)}"


def run(args: argparse.Namespace) -> int:
    target: str = args.target
    problem = ""
    if bool(args.tls_cert) != bool(args.tls_key):
        problem = "give both --tls-cert and --tls-key, or neither"
    elif (args.tls_cert or args.server_name) and not args.tls_ca:
        problem = "--tls-cert and --server-name need --tls-ca (the CA to verify the server with)"
    if problem:
        print(f"lookaside health-probe: {problem}", file=sys.stderr)
        return 2
    if target.startswith(("http://", "https://")):
        try:
            ok, line = probe_http(target, args.timeout, args.tls_ca)
        except (OSError, ValueError) as exc:  # an unreadable --tls-ca
            print(f"lookaside health-probe: --tls-ca: {exc}", file=sys.stderr)
            return 2
    else:
        try:
            host_port(target, "target")
            ok, line = probe_grpc(args)
        except ValueError as exc:
            print(f"lookaside health-probe: {exc}", file=sys.stderr)
            return 2
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
    p.add_argument("--tls-ca", default="", help="PEM CA bundle: use TLS, verified with it")
    p.add_argument("--tls-cert", default="", help="PEM client certificate (mTLS; with --tls-key)")
    p.add_argument("--tls-key", default="", help="PEM private key of --tls-cert")
    p.add_argument("--server-name", default="", help="name the server certificate must carry")
    p.set_defaults(func=run)
