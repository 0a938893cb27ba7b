"""`lookaside ctl`: operate pools and backends over the admin API.

    lookaside ctl pools                          # every pool, its policy and backends
    lookaside ctl backends POOL                  # one pool's backends and their load
    lookaside ctl events POOL                    # the pool's event log, newest first
    lookaside ctl load POOL                      # what clients reported, per window
    lookaside ctl drain|undrain|disable|enable|reinstate POOL BACKEND
    lookaside ctl weight POOL BACKEND N
    lookaside ctl apply -f pools.json            # declare pools (idempotent)
    lookaside ctl export > pools.json            # the current state, same format

`-o json` prints the API's own JSON instead of a table. The admin URL and
token come from --url / --token (or --token-file), else LOOKASIDE_ADMIN_URL
and LOOKASIDE_ADMIN_TOKEN (or LOOKASIDE_ADMIN_TOKEN_FILE). Exit codes: 0 done,
1 the API refused (its message is printed), 2 bad arguments or unreachable.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

from lookaside.tables import age, ms_time, number, table

DEFAULT_URL = "http://127.0.0.1:8080"
TRANSITIONS = ("drain", "undrain", "disable", "enable", "reinstate")


class CtlError(Exception):
    """What went wrong, said for the operator; `code` is the exit status."""

    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.code = code


class AdminClient:
    """The admin API over urllib (the image carries no HTTP client library)."""

    def __init__(self, url: str, token: str, timeout: float = 10.0) -> None:
        self.url = url.rstrip("/")
        self.token = token
        self.timeout = timeout

    def call(self, method: str, path: str, body: Any = None) -> Any:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.url + path, data=data, method=method)  # noqa: S310
        req.add_header("Accept", "application/json")
        if data is not None:
            req.add_header("Content-Type", "application/json")
        if self.token:
            req.add_header("Authorization", f"Bearer {self.token}")
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as reply:  # noqa: S310
                raw = reply.read()
        except urllib.error.HTTPError as exc:
            raise CtlError(f"{method} {path}: HTTP {exc.code}: {_detail(exc.read())}") from None
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise CtlError(
                f"cannot reach the admin API at {self.url} ({reason}); "
                "give --url or LOOKASIDE_ADMIN_URL",
                code=2,
            ) from None
        return json.loads(raw) if raw else None


def _detail(raw: bytes) -> str:
    try:
        body = json.loads(raw)
    except ValueError:
        return raw.decode(errors="replace")[:500]
    if isinstance(body, dict):
        detail = body.get("detail", body)
        if isinstance(detail, list):  # FastAPI validation errors
            return "; ".join(
                f"{'.'.join(str(p) for p in d.get('loc', ()))}: {d.get('msg')}" for d in detail
            )
        return str(detail)
    return str(body)


def _q(name: str) -> str:
    return urllib.parse.quote(name, safe="")


def load_document(path: str) -> Any:
    """A declarative state file: JSON, or YAML when PyYAML is installed."""
    text = sys.stdin.read() if path == "-" else Path(path).read_text()
    try:
        return json.loads(text)
    except ValueError:
        pass
    try:
        import yaml  # type: ignore[import-untyped]
    except ImportError:
        raise CtlError(f"{path} is not JSON (install PyYAML to apply YAML)", code=2) from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise CtlError(f"{path} is neither JSON nor YAML: {exc}", code=2) from None


def _pools_table(body: dict[str, Any]) -> str:
    rows = [
        [
            p["name"],
            p["policy"],
            str(p["backends"]["total"]),
            str(p["backends"]["serving"]),
            str(p["backends"].get("held", 0)),
            str(p["backends"]["draining"]),
            str(p["backends"]["disabled"]),
            str(p["backends"]["unhealthy"] + p["backends"]["ejected"]),
            "yes" if p["fallback"] else "no",
            str(p["version"]),
        ]
        for p in body["pools"]
    ]
    head = ["POOL", "POLICY", "BACKENDS", "SERVING", "HELD", "DRAINING", "DISABLED", "OUT"]
    head.append("FALLBACK")
    return table([*head, "VERSION"], rows)


def _backends_table(body: dict[str, Any]) -> str:
    rows = []
    for b in body["backends"]:
        load = b.get("load") or {}
        rows.append(
            [
                b["id"],
                b["address"],
                b["state"],
                str(b["weight"]),
                number(load.get("in_flight"), "{:.0f}"),
                number(load.get("qps"), "{:.1f}"),
                number(load.get("latency_ms"), "{:.1f}", unknown_zero=not load.get("qps")),
                "static" if b.get("static") else age(b.get("last_heard_ms", 0)),
                b.get("detail") or b.get("metadata", {}).get("served_by", ""),
            ]
        )
    head = ["ID", "ADDRESS", "STATE", "WEIGHT", "IN-FLIGHT", "QPS", "LATENCY-MS", "HEARD"]
    return table([*head, "DETAIL"], rows)


def _short(text: str, width: int = 60) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def _events_table(body: dict[str, Any]) -> str:
    rows = [
        [
            ms_time(e["ts_ms"]),
            e["kind"],
            e["backend"],
            e["actor"],
            _short(e["detail"]),
            str(e["version"]),
        ]
        for e in body["events"]
    ]
    return table(["TIME", "KIND", "BACKEND", "ACTOR", "DETAIL", "VERSION"], rows)


def _load_table(body: dict[str, Any]) -> str:
    rows = []
    for w in body["windows"]:
        c, r = w["counts"], w["rates"]
        rows.append(
            [
                w["window"],
                f"{r['started']:.1f}",
                f"{r['finished']:.1f}",
                str(c["failed_to_send"]),
                str(c["known_received"]),
                f"{r['dropped']:.1f}",
                str(c["reports"]),
            ]
        )
    head = ["WINDOW", "STARTED/S", "FINISHED/S", "FAILED-TO-SEND", "RECEIVED", "DROPS/S", "REPORTS"]
    streams = f"\nclient streams: {body['streams_total']}"
    return table(head, rows) + streams + "\n\n" + _backends_table(body)


def _backend_line(b: dict[str, Any]) -> str:
    return f"{b['pool']}/{b['id']} {b['address']}: {b['state']}, weight {b['weight']}"


def apply_state(client: AdminClient, doc: Any) -> Any:
    """POST /api/v1/state. An admin API that predates that endpoint (404
    with no such route) gets each pool's settings instead: created with
    POST, or replaced with PUT when it exists."""
    try:
        return client.call("POST", "/api/v1/state", doc)
    except CtlError as exc:
        if "HTTP 404: Not Found" not in str(exc) or not isinstance(doc, dict):
            raise
    for pool in doc.get("pools", []):
        name, config = pool["name"], pool.get("config", {})
        try:
            client.call("POST", "/api/v1/pools", {"name": name, **config})
        except CtlError as exc:
            if "HTTP 409" not in str(exc):
                raise
            client.call("PUT", f"/api/v1/pools/{_q(name)}", config)
    return doc


def run(args: argparse.Namespace) -> int:
    token = args.token
    if token is not None:
        print(
            "lookaside ctl: warning: --token on the command line is visible to every user in "
            "`ps` and stays in shell history; use --token-file or env LOOKASIDE_ADMIN_TOKEN "
            "instead",
            file=sys.stderr,
        )
    else:
        token = os.environ.get("LOOKASIDE_ADMIN_TOKEN", "")
    if not token and args.token_file:
        token = Path(args.token_file).read_text().strip()
    client = AdminClient(args.url, token or "")
    try:
        out = dispatch(client, args)
    except CtlError as exc:
        print(f"lookaside ctl: {exc}", file=sys.stderr)
        return exc.code
    except OSError as exc:
        print(f"lookaside ctl: {exc}", file=sys.stderr)
        return 2
    if out:
        print(out)
    return 0


def dispatch(client: AdminClient, args: argparse.Namespace) -> str:
    """The text to print for one command (JSON with -o json)."""
    cmd, as_json = args.ctl_command, args.output == "json"
    if cmd == "pools":
        body = client.call("GET", "/api/v1/pools")
        return json.dumps(body, indent=2) if as_json else _pools_table(body)
    if cmd in ("backends", "events", "load"):
        path = f"/api/v1/pools/{_q(args.pool)}/{cmd}"
        if cmd == "events":
            path += f"?limit={args.limit}"
        body = client.call("GET", path)
        if as_json:
            return json.dumps(body, indent=2)
        render = {"backends": _backends_table, "events": _events_table, "load": _load_table}
        return render[cmd](body)
    if cmd in TRANSITIONS or cmd == "weight":
        path = f"/api/v1/pools/{_q(args.pool)}/backends/{_q(args.backend)}"
        if cmd == "weight":
            body = client.call("PUT", path + "/weight", {"weight": args.weight})
        else:
            body = client.call("POST", f"{path}/{cmd}")
        return json.dumps(body, indent=2) if as_json else _backend_line(body)
    if cmd == "apply":
        doc = load_document(args.file)
        body = apply_state(client, doc)
        if as_json:
            return json.dumps(body, indent=2)
        names = [p.get("name", "?") for p in doc.get("pools", [])] if isinstance(doc, dict) else []
        return f"applied {len(names)} pool(s): {', '.join(names)}"
    if cmd == "export":
        return json.dumps(client.call("GET", "/api/v1/state"), indent=2)
    raise CtlError(f"unknown command {cmd!r}", code=2)


def _common() -> argparse.ArgumentParser:
    """The flags every ctl command takes (after the command, kubectl style)."""
    common = argparse.ArgumentParser(add_help=False)
    env = os.environ.get
    common.add_argument(
        "--url",
        default=env("LOOKASIDE_ADMIN_URL") or DEFAULT_URL,
        help=f"admin API URL [env LOOKASIDE_ADMIN_URL, default {DEFAULT_URL}]",
    )
    common.add_argument(
        "--token",
        default=None,
        help="the admin token; UNSAFE: visible in `ps`, prefer --token-file "
        "[env LOOKASIDE_ADMIN_TOKEN]",
    )
    common.add_argument(
        "--token-file",
        default=env("LOOKASIDE_ADMIN_TOKEN_FILE", ""),
        help="a file holding the admin token [env LOOKASIDE_ADMIN_TOKEN_FILE]",
    )
    common.add_argument(
        "-o", "--output", choices=("table", "json"), default="table", help="output format"
    )
    return common


def add_subcommand(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "ctl",
        help="operate pools and backends over the admin API",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = p.add_subparsers(dest="ctl_command", required=True)
    common = [_common()]

    def command(name: str, help_text: str) -> argparse.ArgumentParser:
        return sub.add_parser(name, help=help_text, description=help_text, parents=common)

    command("pools", "list pools")
    command("backends", "show a pool's backends and their load").add_argument("pool")
    command("load", "show what a pool's clients reported").add_argument("pool")
    ev = command("events", "show a pool's recent events, newest first")
    ev.add_argument("pool")
    ev.add_argument("--limit", type=int, default=50, help="how many events (default 50)")
    for name in TRANSITIONS:
        t = command(name, f"{name} a backend")
        t.add_argument("pool")
        t.add_argument("backend", help="backend id (see `ctl backends POOL`)")
    w = command("weight", "set a backend's weight")
    w.add_argument("pool")
    w.add_argument("backend")
    w.add_argument("weight", type=int, help="1..1000")
    a = command("apply", "declare pools from a file (POST /api/v1/state), idempotent")
    a.add_argument("-f", "--file", required=True, help="JSON or YAML file; - for stdin")
    command("export", "print the current state (GET /api/v1/state)")
    p.set_defaults(func=run)
