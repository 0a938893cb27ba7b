"""`lookaside ctl`: operate pools and backends over the admin API.

    lookaside ctl pools                          # every pool, its policy and backends
    lookaside ctl backends POOL                  # one pool's backends and their load
    lookaside ctl events POOL                    # the pool's event log, newest first
    lookaside ctl load POOL                      # what clients reported, per window
    lookaside ctl streams                        # open grpclb and xDS client streams
    lookaside ctl drain|undrain|disable|enable|reinstate POOL BACKEND
    lookaside ctl weight POOL BACKEND N
    lookaside ctl subset POOL N                  # each client gets N backends (0: all)
    lookaside ctl apply -f pools.json            # declare pools (idempotent)
    lookaside ctl export > pools.json            # the current state, same format

`-o json` prints the API's own JSON instead of a table. The admin URL,
token and CA come from --url, --token (or --token-file) and --ca, else
LOOKASIDE_ADMIN_URL, LOOKASIDE_ADMIN_TOKEN (or LOOKASIDE_ADMIN_TOKEN_FILE)
and LOOKASIDE_ADMIN_CA, else the context `lookaside up` wrote
(lookaside.context; its token and CA only go to its own admin URL). A URL
without a scheme is http://, or https:// when a CA is given. Exit codes:
0 done, 1 the API refused (its message is printed), 2 bad arguments or
unreachable.
"""

from __future__ import annotations

import argparse
import json
import os
import ssl
import sys
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

from lookaside import context as ctx
from lookaside.tables import UNKNOWN, age, ms_time, number, table
from server_common.settings import read_secret

TRANSITIONS = ("drain", "undrain", "disable", "enable", "reinstate")


class CtlError(Exception):
    """What went wrong, said for the operator; `code` is the exit status."""

    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.code = code


class AdminClient:
    """The admin API over urllib (the image carries no HTTP client library)."""

    def __init__(self, url: str, token: str, timeout: float = 10.0, ca: str = "") -> None:
        self.url = url.rstrip("/")
        self.token = token
        self.timeout = timeout
        self.ca = ca
        self.source = "--url"  # what named the URL, for the hint when it is unreachable
        self.ssl = (
            ssl.create_default_context(cafile=ca or None) if self.url.startswith("https:") else None
        )

    def call(self, method: str, path: str, body: Any = None) -> Any:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.url + path, data=data, method=method)  # noqa: S310
        req.add_header("Accept", "application/json")
        if data is not None:
            req.add_header("Content-Type", "application/json")
        if self.token:
            req.add_header("Authorization", f"Bearer {self.token}")
        try:
            with urllib.request.urlopen(  # noqa: S310
                req, timeout=self.timeout, context=self.ssl
            ) as reply:
                raw = reply.read()
        except urllib.error.HTTPError as exc:
            raise CtlError(f"{method} {path}: HTTP {exc.code}: {_detail(exc.read())}") from None
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            if isinstance(reason, ssl.SSLCertVerificationError):
                raise CtlError(
                    f"the admin API at {self.url} has a certificate this client does not trust "
                    f"({reason.verify_message}); give its CA with --ca (env LOOKASIDE_ADMIN_CA)"
                    + (f", not {self.ca}" if self.ca else ""),
                    code=2,
                ) from None
            raise CtlError(
                f"cannot reach the admin API at {self.url} ({reason}); it came from "
                f"{self.source}: give the right one with --url (env LOOKASIDE_ADMIN_URL)",
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
    try:
        text = sys.stdin.read() if path == "-" else Path(path).read_text()
    except OSError as exc:
        raise CtlError(f"cannot read -f {path}: {exc.strerror}", code=2) from None
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
            str(p.get("subset_size") or "-"),
            str(p["version"]),
        ]
        for p in body["pools"]
    ]
    head = ["POOL", "POLICY", "BACKENDS", "SERVING", "HELD", "DRAINING", "DISABLED", "OUT"]
    head += ["FALLBACK", "SUBSET"]
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
    by_source = _sources_table(body)
    return table(head, rows) + by_source + streams + "\n\n" + _backends_table(body)


def _sources_table(body: dict[str, Any]) -> str:
    """Per window, what grpclb ClientStats and xDS LRS reports said."""
    rows = []
    for w in body["windows"]:
        for source, c in sorted((w.get("sources") or {}).items()):
            rows.append(
                [
                    w["window"],
                    source,
                    f"{c['finished_per_second']:.1f}",
                    str(c["finished"]),
                    str(c["known_received"]),
                    str(c["dropped"]),
                    str(c["reports"]),
                ]
            )
    if not rows:
        return ""
    head = ["WINDOW", "SOURCE", "FINISHED/S", "FINISHED", "RECEIVED", "DROPPED", "REPORTS"]
    return "\n\n" + table(head, rows)


def _type_name(type_url: str) -> str:
    """envoy.config.listener.v3.Listener -> Listener (LDS)."""
    short = type_url.rsplit(".", 1)[-1]
    kinds = {
        "Listener": "LDS",
        "RouteConfiguration": "RDS",
        "Cluster": "CDS",
        "ClusterLoadAssignment": "EDS",
    }
    return kinds.get(short, short)


def _type_cells(t: dict[str, Any]) -> list[str]:
    """TYPE, ACKED, NACKED, NACK-ERROR of one resource type of a stream."""
    acked, nacked = t["acked_version"], t["nacked_version"]
    error = ("NACKING " if t["nacking"] else "") + _short(t["nack_error"] or "", 50)
    return [
        _type_name(t["type_url"]),
        UNKNOWN if acked is None else acked or '""',
        UNKNOWN if nacked is None else nacked or '""',
        error.strip(),
    ]


def _streams_table(body: dict[str, Any]) -> str:
    """grpclb streams per pool, then every listed xDS stream with one line
    per resource type: its last ACKed and NACKed version."""
    grpclb = [[p["pool"], str(p["streams_total"])] for p in body["grpclb"]["pools"]]
    out = f"grpclb streams: {body['grpclb']['streams_total']}"
    if grpclb:
        out += "\n" + table(["POOL", "STREAMS"], grpclb)
    xds = body["xds"]
    out += f"\n\nxDS streams: {xds['streams_total']} ({xds['nacking']} NACKing)"
    rows = []
    for r in xds["replicas"]:
        for s in r["streams"]:
            head = [r["replica"], s["stream_id"], _short(s["node_id"], 32), s["peer"]]
            head.append(ms_time(s["opened_ms"]))
            rows += [head + _type_cells(t) for t in s["types"]] or [head + [UNKNOWN] * 3 + [""]]
        listed = len(r["streams"])
        if listed < r["streams_total"]:
            rows.append([r["replica"], f"(+{r['streams_total'] - listed} not listed)"] + [""] * 7)
    if rows:
        head = ["REPLICA", "STREAM", "NODE", "PEER", "OPENED", "TYPE", "ACKED", "NACKED"]
        out += "\n" + table([*head, "NACK-ERROR"], rows)
    return out


def _backend_line(b: dict[str, Any]) -> str:
    return f"{b['pool']}/{b['id']} {b['address']}: {b['state']}, weight {b['weight']}"


def http_url(value: str, named: str, tls: bool) -> str:
    """`value` as an http(s) URL: without a scheme it is http://, or https://
    when `tls` (a CA was given). CtlError (exit 2) naming `named` if bad."""
    value = value.strip()
    if "://" not in value:
        value = ("https://" if tls else "http://") + value
    try:
        parts = urllib.parse.urlsplit(value)
        parts.port  # noqa: B018 - raises on a bad port
    except ValueError as exc:
        raise CtlError(f"{named} {value!r} is not a URL ({exc})", code=2) from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise CtlError(
            f"{named} {value!r} is not an http(s) URL; for example https://127.0.0.1:8080",
            code=2,
        )
    return value


def _given(flag: str | None, env: str) -> tuple[str, str]:
    """(value, what named it) from a flag, else its environment variable."""
    if flag:
        return flag, ""
    value = os.environ.get(env, "").strip()
    return value, (f"env {env}" if value else "")


def client_from_args(args: argparse.Namespace) -> AdminClient:
    """The admin API to talk to: flags, else their environment variables,
    else the context (whose token and CA go only to its own URL)."""
    if args.token is not None:
        print(
            "lookaside ctl: warning: --token on the command line is visible to every user in "
            "`ps` and stays in shell history; use --token-file or env LOOKASIDE_ADMIN_TOKEN "
            "instead",
            file=sys.stderr,
        )
    url, url_from = _given(args.url, "LOOKASIDE_ADMIN_URL")
    url_from = url_from or "--url"
    ca, ca_from = _given(args.ca, "LOOKASIDE_ADMIN_CA")
    token, _ = _given(args.token, "LOOKASIDE_ADMIN_TOKEN")
    token_file, token_file_from = _given(args.token_file, "LOOKASIDE_ADMIN_TOKEN_FILE")
    token_file_from = token_file_from or "--token-file"
    try:
        context = ctx.load()
    except ctx.ContextError as exc:
        raise CtlError(str(exc), code=2) from None
    if context is not None and context.admin_url:
        given = urllib.parse.urlsplit(url if "://" in url else "//" + url)
        have = urllib.parse.urlsplit(context.admin_url)
        same = not url or (given.netloc, given.scheme or have.scheme) == (have.netloc, have.scheme)
        if same:
            if not url:
                url, url_from = context.admin_url, context.describe()
            if not ca and context.ca:
                ca, ca_from = context.ca, context.describe()
            if not token and not token_file and context.token_file:
                token_file = context.token_file
                token_file_from = f"the token file of {context.describe()}"
    if not url:
        raise CtlError(ctx.missing("admin API", "--url", "LOOKASIDE_ADMIN_URL"), code=2)
    url = http_url(url, url_from, bool(ca))
    if ca:
        try:
            ssl.create_default_context(cafile=ca)
        except (OSError, ssl.SSLError) as exc:
            why = getattr(exc, "strerror", None) or str(exc)
            raise CtlError(
                f"{ca_from or '--ca'} {ca!r} is not a readable CA file ({why})", code=2
            ) from None
    if not token and token_file:
        try:
            token = read_secret(token_file, token_file_from)
        except ValueError as exc:
            raise CtlError(str(exc), code=2) from None
    client = AdminClient(url, token, ca=ca)
    client.source = url_from
    return client


def run(args: argparse.Namespace) -> int:
    try:
        client = client_from_args(args)
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


def plan_text(body: dict[str, Any], source: str, dry_run: bool) -> str:
    """The changes an apply made (or, with --dry-run, would make)."""
    verb = "would change" if dry_run else "changed"
    lines = [f"{verb}  {change}" for change in body.get("changes", [])]
    lines += [
        f"pending  pool {h['pool']}: hold on {h['address']} (not registered yet)"
        for h in body.get("pending_holds", [])
    ]
    if not body.get("changes"):
        lines.append(f"nothing to change: the registry already holds {source}")
    elif dry_run:
        lines.append("dry run: nothing was written")
    return "\n".join(lines)


def dispatch(client: AdminClient, args: argparse.Namespace) -> str:
    """The text to print for one command (JSON with -o json)."""
    cmd, as_json = args.ctl_command, args.output == "json"
    if cmd == "pools":
        body = client.call("GET", "/api/v1/pools")
        return json.dumps(body, indent=2) if as_json else _pools_table(body)
    if cmd == "streams":
        body = client.call("GET", "/api/v1/streams")
        return json.dumps(body, indent=2) if as_json else _streams_table(body)
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
    if cmd == "subset":
        body = client.call(
            "PATCH", f"/api/v1/pools/{_q(args.pool)}", {"subset_size": args.subset_size}
        )
        if as_json:
            return json.dumps(body, indent=2)
        size = body["subset_size"]
        return f"{body['name']}: " + (
            f"each client stream gets {size} of the pool's backends"
            if size
            else "every client stream gets every backend"
        )
    if cmd == "apply":
        doc = load_document(args.file)
        query = urllib.parse.urlencode(
            {"dry_run": str(args.dry_run).lower(), "prune": str(args.prune).lower()}
        )
        body = client.call("POST", f"/api/v1/state?{query}", doc)
        return json.dumps(body, indent=2) if as_json else plan_text(body, args.file, args.dry_run)
    if cmd == "export":
        return json.dumps(client.call("GET", "/api/v1/state"), indent=2)
    raise CtlError(f"unknown command {cmd!r}", code=2)


def _common() -> argparse.ArgumentParser:
    """The flags every ctl command takes (after the command, kubectl style)."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--url",
        help="admin API URL; http:// is assumed, https:// with --ca "
        "[env LOOKASIDE_ADMIN_URL, else the context]",
    )
    common.add_argument(
        "--token",
        help="the admin token; UNSAFE: visible in `ps`, prefer --token-file "
        "[env LOOKASIDE_ADMIN_TOKEN]",
    )
    common.add_argument(
        "--token-file",
        help="a file holding the admin token [env LOOKASIDE_ADMIN_TOKEN_FILE, else the context]",
    )
    common.add_argument(
        "--ca",
        help="PEM CA bundle that signed the admin API's certificate "
        "[env LOOKASIDE_ADMIN_CA, else the context]",
    )
    common.add_argument(
        "-o", "--output", choices=("table", "json"), default="table", help="output format"
    )
    return common


def add_plan_flags(parser: argparse.ArgumentParser) -> None:
    """--dry-run and --prune, for `ctl apply` and `lookaside apply` alike."""
    parser.add_argument(
        "--dry-run", action="store_true", help="print the plan (old -> new) and write nothing"
    )
    parser.add_argument(
        "--prune",
        action="store_true",
        help="also remove what the file leaves out of the pools it names: settings go back "
        "to their defaults, unlisted static backends and holds are removed",
    )


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
    command(
        "streams",
        "show open client streams: grpclb per pool, xDS per stream with each resource "
        "type's last ACKed and NACKed version",
    )
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
    sz = command(
        "subset",
        "set a pool's subset size: each client stream gets that many of its backends "
        "(docs/subsetting.md)",
    )
    sz.add_argument("pool")
    sz.add_argument("subset_size", type=int, help="0..1000; 0: every client gets every backend")
    a = command(
        "apply",
        "declare pools from a file (POST /api/v1/state): merges, idempotent, prints the plan",
    )
    a.add_argument("-f", "--file", required=True, help="JSON or YAML file; - for stdin")
    add_plan_flags(a)
    command("export", "print the current state (GET /api/v1/state)")
    p.set_defaults(func=run)
