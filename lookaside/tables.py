"""Plain-text tables and cell formats for the terminal tools (ctl, watch)."""

from __future__ import annotations

import time
from collections.abc import Sequence

UNKNOWN = "—"


def table(head: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """Left-aligned columns two spaces apart, kubectl style."""
    widths = [len(h) for h in head]
    for row in rows:
        for i, cell in enumerate(row):
            widths[i] = max(widths[i], len(cell))
    lines = [
        "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()
        for r in [head, *rows]
    ]
    return "\n".join(lines)


def number(value: float | None, fmt: str, *, unknown_zero: bool = False) -> str:
    """A figure, or — when it is unknown (absent, negative, or a zero that
    only means "nothing measured")."""
    if value is None or value < 0 or (unknown_zero and value == 0):
        return UNKNOWN
    return fmt.format(value)


def ms_time(ts_ms: int) -> str:
    """Unix ms as UTC HH:MM:SS.mmm (the date too when not today)."""
    if ts_ms <= 0:
        return UNKNOWN
    seconds, ms = divmod(ts_ms, 1000)
    t = time.gmtime(seconds)
    today = time.gmtime()
    prefix = "" if t[:3] == today[:3] else time.strftime("%Y-%m-%d ", t)
    return f"{prefix}{time.strftime('%H:%M:%S', t)}.{ms:03d}"


def age(ts_ms: int, now_ms: int | None = None) -> str:
    """How long ago, as 3s, 5m or 2h."""
    if ts_ms <= 0:
        return UNKNOWN
    now_ms = int(time.time() * 1000) if now_ms is None else now_ms
    seconds = max(0, (now_ms - ts_ms) // 1000)
    if seconds < 120:
        return f"{seconds}s"
    if seconds < 7200:
        return f"{seconds // 60}m"
    return f"{seconds // 3600}h"
