"""Cutting the load clients' call files into the window of one fault, and
the table: calls, failed, the longest gap without a successful call, and
the time to recover (from the fault until the last failed call ended)."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class Outcome:
    scenario: str
    client: str
    calls: int = 0
    failed: int = 0
    longest_gap: float = 0.0
    recover: float = 0.0
    codes: Counter[str] = field(default_factory=Counter)
    note: str = ""


def read_calls(path: Path, start: float, end: float) -> list[tuple[float, str]]:
    out: list[tuple[float, str]] = []
    try:
        text = path.read_text()
    except OSError:
        return out
    lines = text.split("\n")[:-1]  # the last one is empty, or still being written
    for line in lines:
        parts = line.split()
        if len(parts) != 2:
            continue
        t = float(parts[0])
        if start <= t <= end:
            out.append((t, parts[1]))
    return out


def analyse(
    scenario: str,
    client: str,
    calls: list[tuple[float, str]],
    start: float,
    fault: float,
    end: float,
) -> Outcome:
    o = Outcome(scenario, client, calls=len(calls))
    ok = sorted(t for t, code in calls if code == "OK")
    failed = [t for t, code in calls if code != "OK"]
    o.failed = len(failed)
    o.codes = Counter(code for _, code in calls if code != "OK")
    edges = [start, *ok, end]
    o.longest_gap = max(b - a for a, b in zip(edges, edges[1:], strict=False))
    o.recover = max(0.0, max(failed) - fault) if failed else 0.0
    return o


HEADER = ("scenario", "client", "calls", "failed", "longest gap s", "recover s", "codes", "note")


def table(outcomes: list[Outcome]) -> str:
    """A Markdown table (readable as plain text too)."""
    rows = [
        (
            o.scenario,
            o.client,
            str(o.calls),
            str(o.failed),
            f"{o.longest_gap:.2f}",
            f"{o.recover:.2f}" if o.failed else "-",
            ", ".join(f"{c} {n}" for c, n in o.codes.most_common()) or "-",
            o.note or "-",
        )
        for o in outcomes
    ]
    widths = [max(len(r[i]) for r in [HEADER, *rows]) for i in range(len(HEADER))]

    def line(cells: tuple[str, ...]) -> str:
        return "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)) + " |"

    sep = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join([line(HEADER), sep, *(line(r) for r in rows)])
