"""The open xDS (ADS) streams of one balancer process, and what each
client last accepted and refused.

The ADS service tells the table of every stream that opens, every ACK and
NACK it reads (per type URL: the version and, for a NACK, the client's
error detail) and every stream that ends. `snapshot()` is what the admin
API, `lookaside ctl xds-streams` and the dashboard show; XdsStreamPublisher
writes it to the registry (ReplicaPort.set_xds_streams) about once a
second while it changes, so every replica's streams can be read in one
place, as grpclb stream counts are.

Everything a client sends is cut to a bounded size here: a peer or node id
to MAX_TEXT characters, a NACK's error to MAX_ERROR, at most MAX_TYPES type
URLs per stream. The registry gets at most MAX_PUBLISHED streams per
replica (NACKed ones first, then the newest) and the count of all.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

from lookaside_registry.asyncutil import cancel_and_wait, cancelling
from lookaside_registry.errors import Unavailable
from lookaside_registry.port import ReplicaPort

log = logging.getLogger("lookaside.balancer")

MAX_TEXT = 256
MAX_ERROR = 512
MAX_TYPES = 16
MAX_PUBLISHED = 200
# An unchanged table is written again this often, so readers can tell a
# live replica from a gone one (lookaside_registry.xds.STALE_MS).
REFRESH_S = 5.0

__all__ = ["StreamRecord", "TypeRecord", "XdsStreamPublisher", "XdsStreamTable"]


class TypeRecord:
    """What one stream's client last said of one resource type."""

    __slots__ = ("acked", "acked_at", "nacked", "nacked_at", "error", "acks", "nacks", "nacking")

    def __init__(self) -> None:
        self.acked: str | None = None
        self.acked_at: float | None = None
        self.nacked: str | None = None
        self.nacked_at: float | None = None
        self.error: str | None = None
        self.acks = 0
        self.nacks = 0
        # The client's last word on this type was a NACK.
        self.nacking = False


class StreamRecord:
    """One open stream in the table (its ADS handler keeps it, so an ACK is
    recorded with no look-up)."""

    __slots__ = ("stream_id", "peer", "node_id", "opened_at", "types")

    def __init__(self, stream_id: str, peer: str, node_id: str, opened_at: float) -> None:
        self.stream_id = stream_id
        self.peer = peer
        self.node_id = node_id
        self.opened_at = opened_at
        self.types: dict[str, TypeRecord] = {}

    def state(self, type_url: str) -> TypeRecord | None:
        """The record of `type_url`, made on first use; None past MAX_TYPES."""
        type_url = _cut(type_url, MAX_TEXT)
        found = self.types.get(type_url)
        if found is None:
            if len(self.types) >= MAX_TYPES:
                return None
            found = self.types[type_url] = TypeRecord()
        return found

    def row(self) -> dict[str, Any]:
        return {
            "stream_id": self.stream_id,
            "peer": self.peer,
            "node_id": self.node_id,
            "opened_at": self.opened_at,
            # The short forms: type URL -> last ACKed version, and type URL
            # -> {version, error} of the last NACK.
            "acked": {url: t.acked for url, t in self.types.items() if t.acked is not None},
            "nacked": {
                url: {"version": t.nacked, "error": t.error}
                for url, t in self.types.items()
                if t.nacked is not None
            },
            "types": {
                url: {
                    "acked_version": t.acked,
                    "acked_at": t.acked_at,
                    "acks": t.acks,
                    "nacked_version": t.nacked,
                    "nacked_at": t.nacked_at,
                    "nack_error": t.error,
                    "nacks": t.nacks,
                    "nacking": t.nacking,
                }
                for url, t in sorted(self.types.items())
            },
        }

    @property
    def last_nack(self) -> float:
        return max((t.nacked_at or 0.0 for t in self.types.values()), default=0.0)


def _cut(text: str, most: int) -> str:
    return text if len(text) <= most else text[: most - 1] + "…"


class XdsStreamTable:
    """Open ADS streams by id. Calls about a stream that is not open (never
    opened, or closed already) are ignored: a stream's handler may still
    read a last request while it ends."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self.clock = clock
        # In the order they opened (oldest first).
        self._streams: dict[str, StreamRecord] = {}
        # The streams with a NACK, for published() (few, usually none).
        self._nacked: dict[str, StreamRecord] = {}
        # Moves on every change: the publisher writes only a changed table
        # (and a refresh now and then).
        self.generation = 0

    def __len__(self) -> int:
        return len(self._streams)

    def opened(self, stream_id: str, peer: str, node_id: str) -> StreamRecord:
        record = self._streams[stream_id] = StreamRecord(
            stream_id, _cut(peer, MAX_TEXT), _cut(node_id, MAX_TEXT), self.clock()
        )
        self.generation += 1
        return record

    def track(self, record: StreamRecord, type_url: str, state: TypeRecord) -> None:
        """Makes `state` the stream's record of `type_url` (the ADS stream's
        own per-type object, so that an ACK is recorded on it directly).
        The caller bounds its type URLs."""
        record.types[type_url] = state

    def ack(self, state: TypeRecord, version: str, sent: str = "") -> None:
        """An ACK of `version` on an open stream's record of a type. The
        version is held as `sent` (the string of the response, shared by
        every stream sent it) when the two are equal."""
        state.acked = sent if version == sent else _cut(version, MAX_TEXT)
        state.acked_at = self.clock()
        state.acks += 1
        state.nacking = False
        self.generation += 1

    def nack(self, record: StreamRecord, type_url: str, version: str, error: str) -> None:
        """A NACK of `version` of `type_url` (with the client's error) on an
        open stream's record."""
        state = record.state(type_url)
        if state is None or self._streams.get(record.stream_id) is not record:
            return
        self._nacked[record.stream_id] = record
        state.nacked = _cut(version, MAX_TEXT)
        state.nacked_at = self.clock()
        state.error = _cut(error, MAX_ERROR)
        state.nacks += 1
        state.nacking = True
        self.generation += 1

    def acked(self, stream_id: str, type_url: str, version: str) -> None:
        stream = self._streams.get(stream_id)
        state = stream.state(type_url) if stream else None
        if state is not None:
            self.ack(state, version)

    def nacked(self, stream_id: str, type_url: str, version: str, error: str) -> None:
        stream = self._streams.get(stream_id)
        if stream is not None:
            self.nack(stream, type_url, version, error)

    def closed(self, stream_id: str) -> None:
        if self._streams.pop(stream_id, None) is not None:
            self._nacked.pop(stream_id, None)
            self.generation += 1

    def snapshot(self) -> list[dict[str, Any]]:
        """Every open stream, oldest first: stream_id, peer, node_id,
        opened_at (Unix seconds), `acked` (type URL -> the last version
        ACKed), `nacked` (type URL -> {version, error} of the last NACK),
        and `types`, the whole record: per type URL the last ACKed
        version (acked_version, acked_at, acks), the last NACKed version
        with the client's error (nacked_version, nacked_at, nack_error,
        nacks) and whether the client's last word on the type was a NACK
        (nacking); None where the client has not yet ACKed or NACKed."""
        return [s.row() for s in self._streams.values()]

    def published(self, most: int = MAX_PUBLISHED) -> list[dict[str, Any]]:
        """At most `most` streams to publish: those with a NACK first (the
        latest NACK first), then the newest."""
        chosen = sorted(self._nacked.values(), key=lambda s: -s.last_nack)[:most]
        for stream_id in reversed(self._streams):
            if len(chosen) >= most:
                break
            if stream_id not in self._nacked:
                chosen.append(self._streams[stream_id])
        return [s.row() for s in chosen]


class XdsStreamPublisher:
    """Writes the table to the registry while it changes (at most once per
    `interval`), refreshes it every REFRESH_S, and removes it at stop()."""

    def __init__(
        self,
        store: ReplicaPort,
        table: XdsStreamTable,
        replica_id: str,
        *,
        interval: float = 1.0,
        refresh: float = REFRESH_S,
    ) -> None:
        self.store = store
        self.table = table
        self.replica_id = replica_id
        self.interval = interval
        self.refresh = refresh
        self._written = -1
        self._written_at = 0.0
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="xds-streams-publish")

    async def stop(self) -> None:
        if self._task is None:
            return
        await cancel_and_wait([self._task])
        self._task = None
        try:
            await self.store.clear_xds_streams(self.replica_id)
        except Unavailable as exc:
            log.warning("xDS streams: could not remove this replica's entry (%s)", exc)

    async def publish(self, *, force: bool = False) -> bool:
        """Writes the table if it changed since the last write or the last
        write is older than the refresh; True when it wrote."""
        now = time.monotonic()
        generation = self.table.generation
        if not force and generation == self._written and now - self._written_at < self.refresh:
            return False
        await self.store.set_xds_streams(self.replica_id, self.table.published(), len(self.table))
        self._written, self._written_at = generation, now
        return True

    async def _run(self) -> None:
        while not cancelling():
            try:
                await self.publish()
            except Unavailable as exc:
                if cancelling():
                    raise
                log.debug("xDS streams: publish failed (%s)", exc)
            await asyncio.sleep(self.interval)
