"""What the demo client prints: one line per call, and a summary table.

Pure code: the client turns each call into a CallResult; this module
formats it and counts it.

    [GetFeature] (resp) (server=vm:8081) name: "Nassau Hall, Princeton, NJ, USA" ...
    [GetFeature] (error) (server=vm:8082) UNAVAILABLE: injected fault
"""

from __future__ import annotations

import threading
from collections import Counter
from dataclasses import dataclass

NO_SERVER = "-"  # the call failed before any server named itself
OK = "OK"


@dataclass(frozen=True, slots=True)
class CallResult:
    api: str
    server: str  # the x-served-by header, or NO_SERVER
    code: str  # OK or a grpc.StatusCode name
    text: str  # a one-line description of the response, or the error details

    @property
    def ok(self) -> bool:
        return self.code == OK


def format_line(result: CallResult) -> str:
    """The per-call log line, in the shape of the article's logs."""
    server = result.server or NO_SERVER
    if result.ok:
        return f"[{result.api}] (resp) (server={server}) {result.text}".rstrip()
    return f"[{result.api}] (error) (server={server}) {result.code}: {result.text}"


class Tally:
    """Calls per server and errors per status code; safe across threads."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.calls: Counter[str] = Counter()
        self.errors_by_server: Counter[str] = Counter()
        self.errors_by_code: Counter[str] = Counter()

    def add(self, result: CallResult) -> None:
        server = result.server or NO_SERVER
        with self._lock:
            self.calls[server] += 1
            if not result.ok:
                self.errors_by_server[server] += 1
                self.errors_by_code[result.code] += 1

    @property
    def total(self) -> int:
        return sum(self.calls.values())

    @property
    def errors(self) -> int:
        return sum(self.errors_by_code.values())


def summary_table(tally: Tally) -> str:
    """The table printed at the end of a run. Servers are sorted by name;
    NO_SERVER (calls that never reached one) comes last."""
    with tally._lock:
        calls = dict(tally.calls)
        errors = dict(tally.errors_by_server)
        codes = dict(tally.errors_by_code)
    servers = sorted(calls, key=lambda s: (s == NO_SERVER, s))
    width = max([len("server"), len("total"), *(len(s) for s in servers)])
    row = f"  {{:<{width}}}  {{:>7}}  {{:>7}}  {{:>7}}"
    lines = ["calls per server:", row.format("server", "calls", "ok", "errors")]
    for s in servers:
        lines.append(row.format(s, calls[s], calls[s] - errors.get(s, 0), errors.get(s, 0)))
    total, failed = sum(calls.values()), sum(codes.values())
    lines.append(row.format("total", total, total - failed, failed))
    lines.append("errors per status code:")
    if not codes:
        lines.append("  (none)")
    else:
        code_width = max(len(c) for c in codes)
        for code, n in sorted(codes.items(), key=lambda kv: (-kv[1], kv[0])):
            lines.append(f"  {code:<{code_width}}  {n:>7}")
    return "\n".join(lines)


def parse_summary(text: str) -> tuple[dict[str, int], dict[str, int]]:
    """Reads (calls per server, errors per code) back from summary_table's
    output, wherever it sits in text. For scripts and tests."""
    per_server: dict[str, int] = {}
    per_code: dict[str, int] = {}
    section = None
    for line in text.splitlines():
        if line == "calls per server:":
            section, per_server, per_code = "servers", {}, {}
            continue
        if line == "errors per status code:":
            section = "codes"
            continue
        if not line.startswith("  "):
            section = None
            continue
        parts = line.split()
        if section == "servers" and parts[0] not in ("server", "total") and len(parts) == 4:
            per_server[parts[0]] = int(parts[1])
        elif section == "codes" and len(parts) == 2:
            per_code[parts[0]] = int(parts[1])
    return per_server, per_code
