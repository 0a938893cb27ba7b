"""The open xDS (ADS) streams of one balancer process, as operators see
them: each stream's peer, node id, and per resource type the last version
the client accepted (ACK) and the last it refused (NACK) with its error."""

from __future__ import annotations

import time
from typing import Any


class XdsStreamTable:
    """Filled by the ADS service (balancer_server.xds.ads); read by the
    admin API through snapshot()."""

    def __init__(self) -> None:
        self._streams: dict[str, dict[str, Any]] = {}

    def opened(self, stream_id: str, peer: str, node_id: str) -> None:
        self._streams[stream_id] = {
            "stream_id": stream_id,
            "peer": peer,
            "node_id": node_id,
            "opened_at": time.time(),
            "acked": {},
            "nacked": {},
        }

    def acked(self, stream_id: str, type_url: str, version: str) -> None:
        entry = self._streams.get(stream_id)
        if entry is not None:
            entry["acked"][type_url] = version

    def nacked(self, stream_id: str, type_url: str, version: str, error: str) -> None:
        entry = self._streams.get(stream_id)
        if entry is not None:
            entry["nacked"][type_url] = {"version": version, "error": error}

    def closed(self, stream_id: str) -> None:
        self._streams.pop(stream_id, None)

    def snapshot(self) -> list[dict[str, Any]]:
        return [
            {**entry, "acked": dict(entry["acked"]), "nacked": dict(entry["nacked"])}
            for entry in self._streams.values()
        ]
