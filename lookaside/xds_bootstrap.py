"""`lookaside xds-bootstrap`: the xDS bootstrap a gRPC client needs to get
its pools from a Lookaside balancer on `xds:///POOL`.

    lookaside xds-bootstrap --server 127.0.0.1:50051 > bootstrap.json
    lookaside xds-bootstrap --server lb.example:50051 --ca ca.pem            # TLS
    lookaside xds-bootstrap --server lb.example:50051 --ca ca.pem \\
        --cert client.pem --key client-key.pem --node-id checkout-7f9c      # mTLS
    lookaside xds-bootstrap --server lb.example:50051 --ca ca.pem \
        --backend-ca backend-ca.pem                                        # TLS backends
    GRPC_XDS_BOOTSTRAP=bootstrap.json ./client xds:///routeguide

The client reads the file named by GRPC_XDS_BOOTSTRAP (or the JSON in
GRPC_XDS_BOOTSTRAP_CONFIG) when it makes its first `xds:///` channel.

What it holds:

- `xds_servers`: the balancer (any replica, or the Service in front of
  them), with `channel_creds` `insecure`, or `tls` with the CA (and the
  client certificate and key for mTLS, which is how a pool that requires
  client credentials knows the client: its client_identities); paths are
  made absolute, since the client resolves them from its own directory.
  `server_features`: `ignore_resource_deletion`, so that a pool the
  balancer stops serving (deleted, or not yet read after a restart) is
  kept by the client with what it had, as grpclb clients keep their last
  list; and `xds_v3`, which older gRPC releases needed to speak v3 (newer
  ones ignore it). Nothing else: the balancer speaks the state-of-the-world
  protocol, the clients' default.
- `call_creds` with --client-token-file: the pool's client token, sent
  as `authorization: Bearer <token>` on the xDS stream (gRFC A97's
  `jwt_token_file`). gRPC takes it only when the client runs with
  GRPC_EXPERIMENTAL_XDS_BOOTSTRAP_CALL_CREDS=true, only over TLS, and only
  a token shaped as a JWT (it reads the expiry): the pool's client token
  must then be one.
- `certificate_providers` with --backend-ca (and --backend-cert and
  --backend-key for backends that require mTLS): when the balancer runs
  with --backend-tls-ca, each pool's Cluster asks the client to dial its
  backends over TLS with the certificate provider instances
  `lookaside-backend-ca` (the CA that signed the backends' certificates)
  and `lookaside-backend-cert` (the client certificate), which these
  define with gRPC's `file_watcher` plugin (files re-read every
  --refresh-interval). A client without them refuses such a Cluster. The
  client must also make its channel with xDS credentials
  (`grpc.secure_channel(target, grpc.xds_channel_credentials(
  grpc.experimental.insecure_channel_credentials()))` in Python): with plain insecure
  credentials gRPC ignores the Cluster's TLS and dials in plaintext.
- `node`: the id the balancer shows for the client's stream (admin API
  /api/v1/streams, `lookaside ctl streams`), and a locality when given.

Bad flags get one line on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
from pathlib import Path
from typing import Any

from balancer_server.xds.resources import BACKEND_CA, BACKEND_CERT
from server_common.settings import host_port

SERVER_FEATURES = ("ignore_resource_deletion", "xds_v3")
MAX_NODE_ID = 128


def default_node_id() -> str:
    return socket.gethostname() or "lookaside-client"


def _readable(path: str, flag: str) -> str:
    p = Path(path).expanduser()
    try:
        with p.open("rb") as f:
            head = f.read(64)
    except OSError as exc:
        raise ValueError(f"{flag} {path!r} cannot be read: {exc.strerror}") from None
    if b"-----BEGIN" not in head and not head.lstrip().startswith(b"-----"):
        raise ValueError(f"{flag} {path!r} is not a PEM file")
    return str(p.resolve())


def _token_file(path: str) -> str:
    p = Path(path).expanduser()
    try:
        token = p.read_text().strip()
    except (OSError, UnicodeDecodeError) as exc:
        why = exc.strerror if isinstance(exc, OSError) else "not text"
        raise ValueError(f"--client-token-file {path!r} cannot be read: {why}") from None
    if token.count(".") != 2:
        raise ValueError(
            f"--client-token-file {path!r} holds no JWT (header.claims.signature): gRPC's "
            "jwt_token_file call credentials send only JWTs"
        )
    return str(p.resolve())


def bootstrap(
    server: str,
    *,
    node_id: str = "",
    ca: str = "",
    cert: str = "",
    key: str = "",
    region: str = "",
    zone: str = "",
    client_token_file: str = "",
    backend_ca: str = "",
    backend_cert: str = "",
    backend_key: str = "",
    refresh_interval: float = 600.0,
) -> dict[str, Any]:
    """The bootstrap document; ValueError naming the flag that is wrong."""
    server = host_port(server, "--server")
    if bool(cert) != bool(key):
        raise ValueError("--cert and --key go together (the client certificate and its key)")
    if cert and not ca:
        raise ValueError("--cert needs --ca (a client certificate is sent over TLS)")
    if client_token_file and not ca:
        raise ValueError(
            "--client-token-file needs --ca (gRPC sends call credentials over TLS only)"
        )
    if bool(backend_cert) != bool(backend_key):
        raise ValueError(
            "--backend-cert and --backend-key go together (the client certificate for "
            "backends that require mTLS, and its key)"
        )
    if backend_cert and not backend_ca:
        raise ValueError("--backend-cert needs --backend-ca (the backends' CA)")
    if not 1 <= refresh_interval <= 86_400:
        raise ValueError("--refresh-interval must be 1..86400 seconds")
    node_id = node_id.strip() or default_node_id()
    if len(node_id) > MAX_NODE_ID or not node_id.isprintable():
        raise ValueError(f"--node-id must be 1..{MAX_NODE_ID} printable characters")
    creds: dict[str, Any] = {"type": "insecure"}
    if ca:
        config = {"ca_certificate_file": _readable(ca, "--ca")}
        if cert:
            config["certificate_file"] = _readable(cert, "--cert")
            config["private_key_file"] = _readable(key, "--key")
        creds = {"type": "tls", "config": config}
    server_doc: dict[str, Any] = {
        "server_uri": server,
        "channel_creds": [creds],
        "server_features": list(SERVER_FEATURES),
    }
    if client_token_file:
        token = _token_file(client_token_file)
        server_doc["call_creds"] = [{"type": "jwt_token_file", "config": {"jwt_token_file": token}}]
    node: dict[str, Any] = {"id": node_id}
    locality = {k: v for k, v in (("region", region), ("zone", zone)) if v}
    if locality:
        node["locality"] = locality
    doc: dict[str, Any] = {"xds_servers": [server_doc], "node": node}
    if backend_ca:
        every = f"{refresh_interval:g}s"
        providers = {
            BACKEND_CA: {
                "plugin_name": "file_watcher",
                "config": {
                    "ca_certificate_file": _readable(backend_ca, "--backend-ca"),
                    "refresh_interval": every,
                },
            }
        }
        if backend_cert:
            providers[BACKEND_CERT] = {
                "plugin_name": "file_watcher",
                "config": {
                    "certificate_file": _readable(backend_cert, "--backend-cert"),
                    "private_key_file": _readable(backend_key, "--backend-key"),
                    "refresh_interval": every,
                },
            }
        doc["certificate_providers"] = providers
    return doc


def _run(args: argparse.Namespace) -> int:
    try:
        doc = bootstrap(
            args.server,
            node_id=args.node_id,
            ca=args.ca,
            cert=args.cert,
            key=args.key,
            region=args.region,
            zone=args.zone,
            client_token_file=args.client_token_file,
            backend_ca=args.backend_ca,
            backend_cert=args.backend_cert,
            backend_key=args.backend_key,
            refresh_interval=args.refresh_interval,
        )
    except ValueError as exc:
        print(f"lookaside xds-bootstrap: {exc}", file=sys.stderr)
        return 2
    text = json.dumps(doc, indent=2) + "\n"
    if args.out in ("", "-"):
        sys.stdout.write(text)
        return 0
    try:
        Path(args.out).write_text(text)
    except OSError as exc:
        print(
            f"lookaside xds-bootstrap: cannot write {args.out!r}: {exc.strerror}", file=sys.stderr
        )
        return 2
    return 0


def add_subcommand(sub: Any) -> None:
    p = sub.add_parser(
        "xds-bootstrap",
        help="print the xDS bootstrap for a gRPC client on xds:///POOL",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--server",
        default=os.environ.get("LOOKASIDE_XDS_SERVER", "127.0.0.1:50051"),
        help="the balancer's host:port [env LOOKASIDE_XDS_SERVER; default 127.0.0.1:50051]",
    )
    p.add_argument("--ca", default="", help="PEM CA that signed the balancer's certificate (TLS)")
    p.add_argument("--cert", default="", help="PEM client certificate (mTLS; needs --key)")
    p.add_argument("--key", default="", help="PEM private key of --cert")
    p.add_argument(
        "--node-id",
        default="",
        help="the client's node id, shown beside its stream (default the hostname)",
    )
    p.add_argument(
        "--client-token-file",
        default="",
        help="a file holding the pool's client token (a JWT), sent on the xDS stream "
        "(needs --ca, and GRPC_EXPERIMENTAL_XDS_BOOTSTRAP_CALL_CREDS=true in the client)",
    )
    p.add_argument(
        "--backend-ca",
        default="",
        help="PEM CA that signed the backends' certificates: for a balancer with "
        "--backend-tls-ca (TLS backends)",
    )
    p.add_argument(
        "--backend-cert",
        default="",
        help="PEM client certificate for backends that require mTLS (needs --backend-key)",
    )
    p.add_argument("--backend-key", default="", help="PEM private key of --backend-cert")
    p.add_argument(
        "--refresh-interval",
        type=float,
        default=600.0,
        help="seconds between re-reads of the --backend-* files [default 600]",
    )
    p.add_argument("--region", default="", help="the client's locality: region")
    p.add_argument("--zone", default="", help="the client's locality: zone")
    p.add_argument("-o", "--out", default="", help="write to this file instead of stdout")
    p.set_defaults(func=_run)
