"""Reading the xDS streams that balancer replicas publish.

Each replica writes one entry of the hash `lookaside:xds:streams`: its
open ADS streams (at most a few hundred of them, NACKed ones first), the
count of all, and when it wrote (balancer_server.xds_streams). An entry
not refreshed within STALE_MS belongs to a replica that is gone or cut
off, and is left out; one a hundred times older is removed by the next
write.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

STALE_MS = 15_000
FORGET_MS = 100 * STALE_MS


@dataclass(frozen=True, slots=True)
class ReplicaXdsStreams:
    replica: str
    total: int
    ts_ms: int
    streams: list[dict[str, Any]] = field(default_factory=list)


def _text(value: bytes | str) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else value


def entry(total: int, streams: list[dict[str, Any]], ts_ms: int) -> str:
    return json.dumps({"ts_ms": ts_ms, "total": total, "streams": streams}, separators=(",", ":"))


def parse_entries(
    raw: Mapping[Any, Any], now_ms: int | None = None, stale_ms: int = STALE_MS
) -> list[ReplicaXdsStreams]:
    """The replicas' entries, leaving out stale and unreadable ones."""
    now_ms = int(time.time() * 1000) if now_ms is None else now_ms
    out: list[ReplicaXdsStreams] = []
    for replica, value in raw.items():
        try:
            data = json.loads(value)
            total, ts_ms = int(data["total"]), int(data["ts_ms"])
            streams = [s for s in data.get("streams", []) if isinstance(s, dict)]
        except (ValueError, TypeError, KeyError, AttributeError):
            continue
        if now_ms - ts_ms > stale_ms:
            continue
        out.append(ReplicaXdsStreams(_text(replica), total, ts_ms, streams))
    return sorted(out, key=lambda r: r.replica)


def forgotten(raw: Mapping[Any, Any], now_ms: int) -> list[str]:
    """Replicas whose entries are so old that they are removed."""
    out = []
    for replica, value in raw.items():
        try:
            ts_ms = int(json.loads(value)["ts_ms"])
        except (ValueError, TypeError, KeyError):
            ts_ms = 0
        if now_ms - ts_ms > FORGET_MS:
            out.append(_text(replica))
    return out
