"""Deterministic subsetting: each client stream of a pool gets a stable
subset of `subset_size` of the pool's listed backends.

The assignment (docs/subsetting.md has the reasons):

- The backends stand on a ring, ordered by a hash of their id (the same
  order in every balancer process).
- Each client is *anchored* at one backend; its subset is its anchor and
  the `subset_size - 1` backends after it on the ring (a window).
- A new client is anchored where its window's backends carry the fewest
  clients (the sum of their loads; ties: the lowest ring position), so
  the clients of a pool spread evenly over its backends, and a client that
  joins after churn fills the gap churn left.
- A backend that leaves is taken off the ring; the clients anchored at it
  are anchored at its successor. Every window that held it therefore
  loses it and gains the next backend on the ring, and no other window
  changes: only the clients that had the backend see a new subset, and for
  them exactly one member is replaced.
- A backend that joins is put on the ring at its hash: the windows that
  now reach it (those anchored at the `subset_size - 1` backends before
  it) gain it and lose their last member; no other window changes.

When the pool lists no more than `subset_size` backends, every window is
the whole ring: each client gets every backend, as without subsetting.

Everything here is plain deterministic computation, no I/O: a table's
subsets follow only from the order of its calls. Each balancer process
keeps its own tables (a table per pool), so the clients of one process are
balanced among themselves, and so the sum over processes is too.
"""

from __future__ import annotations

import hashlib
from collections.abc import Hashable, Iterable

from balancer_server import lists
from lookaside_registry.model import Backend, PoolSnapshot

SUBSET_SIZE_MAX = 1000
# Scores put the anchored clients above any window sum.
_SCORE_SHIFT = 1 << 48


def ring_key(backend_id: str) -> tuple[int, str]:
    """A backend's place on the ring: a hash of its id (then the id itself,
    so that equal hashes still order the same everywhere)."""
    digest = hashlib.blake2b(backend_id.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big"), backend_id


class SubsetTable:
    """The clients of one pool, anchored on the ring of its backends.

    `set_backends` follows the pool's listed backends, `join` and `leave`
    its client streams; `subset(client)` is the client's subset now (a tuple
    of backend ids in ring order, empty while the pool lists no backend).
    """

    __slots__ = (
        "size", "ring", "keys", "anchors", "counts", "_load", "_sums", "_score", "_unplaced",
        "_pos", "_windows",
    )  # fmt: skip

    def __init__(self, size: int) -> None:
        if not 1 <= size <= SUBSET_SIZE_MAX:
            raise ValueError(f"subset size {size} is out of range 1..{SUBSET_SIZE_MAX}")
        self.size = size
        self.ring: list[str] = []
        self.keys: list[tuple[int, str]] = []
        # Client -> the backend id it is anchored at.
        self.anchors: dict[object, str] = {}
        # Per ring position: clients anchored there.
        self.counts: list[int] = []
        # Per ring position: clients whose window holds it (its load), and
        # the sum of the loads of the window that starts there. Rebuilt
        # after a change of backends, updated in place for clients.
        self._load: list[int] = []
        self._sums: list[int] = []
        # Per ring position: what a new client anchored there would cost,
        # fewest anchored clients first, then the least loaded window.
        self._score: list[int] = []
        # Clients that joined while the ring was empty.
        self._unplaced: set[object] = set()
        # Backend id -> ring position, and the windows read since the ring
        # last changed, by anchor.
        self._pos: dict[str, int] = {}
        self._windows: dict[str, tuple[str, ...]] = {}

    @property
    def window(self) -> int:
        """How many backends each subset has."""
        return min(self.size, len(self.ring))

    def __len__(self) -> int:
        return len(self.anchors) + len(self._unplaced)

    def resize(self, size: int) -> None:
        """A new subset size: the anchors stay, the windows grow or shrink."""
        if not 1 <= size <= SUBSET_SIZE_MAX:
            raise ValueError(f"subset size {size} is out of range 1..{SUBSET_SIZE_MAX}")
        if size != self.size:
            self.size = size
            self._rebuild()

    # -- backends --------------------------------------------------------

    def set_backends(self, backend_ids: Iterable[str]) -> None:
        """The pool lists these backends now: the ones gone leave the ring
        (their clients move to the next surviving backend), new ones join it
        at their hash."""
        wanted = set(backend_ids)
        current = set(self.ring)
        if wanted == current:
            return
        gone = current - wanted
        if gone:
            survivors = [b for b in self.ring if b not in gone]
            if survivors:
                successor: dict[str, str] = {}
                # The next survivor after each backend, walking the ring
                # backwards from a survivor so every gap is filled once.
                n = len(self.ring)
                start = next(i for i, b in enumerate(self.ring) if b not in gone)
                nxt = self.ring[start]
                for step in range(1, n + 1):
                    b = self.ring[(start - step) % n]
                    if b in gone:
                        successor[b] = nxt
                    else:
                        nxt = b
                for client, anchor in self.anchors.items():
                    if anchor in gone:
                        self.anchors[client] = successor[anchor]
            else:
                self._unplaced.update(self.anchors)
                self.anchors.clear()
        self.keys = sorted(ring_key(b) for b in wanted)
        self.ring = [b for _, b in self.keys]
        self._rebuild()
        if self.ring and self._unplaced:
            waiting = sorted(self._unplaced, key=repr)
            self._unplaced.clear()
            for client in waiting:
                self.join(client)

    def _rebuild(self) -> None:
        n = len(self.ring)
        pos = self._pos = {b: i for i, b in enumerate(self.ring)}
        self._windows = {}
        self.counts = [0] * n
        for anchor in self.anchors.values():
            self.counts[pos[anchor]] += 1
        w = self.window
        self._load = [0] * n
        self._sums = [0] * n
        if n == 0:
            self._score = []
            return
        # load[i]: clients anchored at the w positions ending at i.
        running = sum(self.counts[(-j) % n] for j in range(w))
        for i in range(n):
            self._load[i] = running
            running += self.counts[(i + 1) % n] - self.counts[(i + 1 - w) % n]
        running = sum(self._load[j % n] for j in range(w))
        for i in range(n):
            self._sums[i] = running
            running += self._load[(i + w) % n] - self._load[i]
        self._score = [c * _SCORE_SHIFT + s for c, s in zip(self.counts, self._sums, strict=True)]

    # -- clients ---------------------------------------------------------

    def join(self, client: object) -> None:
        """Anchors a new client where its window is least loaded."""
        if client in self.anchors or client in self._unplaced:
            return
        if not self.ring:
            self._unplaced.add(client)
            return
        score = self._score
        i = score.index(min(score))
        self.anchors[client] = self.ring[i]
        self._shift(i, 1)

    def leave(self, client: object) -> None:
        self._unplaced.discard(client)
        anchor = self.anchors.pop(client, None)
        if anchor is not None:
            self._shift(self._pos[anchor], -1)

    def _shift(self, i: int, delta: int) -> None:
        """One client more (or fewer) anchored at ring position i."""
        n = len(self.ring)
        w = self.window
        self.counts[i] += delta
        self._score[i] += delta * _SCORE_SHIFT
        if 2 * w > n:
            self._rebuild()  # windows overlap themselves around a small ring
            return
        for j in range(w):
            self._load[(i + j) % n] += delta
        # The window at i + d (|d| < w) shares w - |d| positions with i's.
        for d in range(1 - w, w):
            x = (i + d) % n
            self._sums[x] += delta * (w - abs(d))
            self._score[x] += delta * (w - abs(d))

    # -- reads -----------------------------------------------------------

    def anchor(self, client: object) -> str | None:
        return self.anchors.get(client)

    def subset(self, client: object) -> tuple[str, ...]:
        anchor = self.anchors.get(client)
        if anchor is None:
            return ()
        return self.window_at(anchor)

    def window_at(self, anchor: str) -> tuple[str, ...]:
        """The subset of a client anchored at `anchor` (a listed backend), in
        ring order from the ring's start, so that equal subsets are equal
        tuples (when the pool is no bigger than a subset, every client's is
        the whole ring)."""
        window = self._windows.get(anchor)
        if window is not None:
            return window
        n = len(self.ring)
        i = self._pos[anchor]
        w = self.window
        if i + w <= n:
            window = tuple(self.ring[i : i + w])
        else:
            window = tuple(self.ring[: i + w - n] + self.ring[i:])
        self._windows[anchor] = window
        return window

    def loads(self) -> dict[str, int]:
        """Backend id -> how many clients have it in their subset."""
        return dict(zip(self.ring, self._load, strict=True))


def _usable(size: object) -> int:
    """A stored subset size as the table takes it (the registry refuses
    others on write; a config edited in Redis by hand is clamped)."""
    try:
        return min(max(int(size), 1), SUBSET_SIZE_MAX)  # type: ignore[call-overload]
    except (TypeError, ValueError, OverflowError):
        return SUBSET_SIZE_MAX


def subsetting(size: object) -> bool:
    """Whether a pool's stored subset size turns subsetting on: a number
    above 0 (not a boolean); anything else, as 0, lists the whole pool."""
    return isinstance(size, int | float) and not isinstance(size, bool) and size > 0


# What a subset's response is made of: the pool's fallback flag and drop
# rates, the epoch, and each member's id, address and weight.
Inputs = tuple[object, ...]


class SubsetPayloads:
    """The payloads of one pool's feed when the pool has a subset size:
    the table of its streams, and one serialized response per subset in use
    (streams with the same subset share the bytes). A subset whose response
    is made of the same inputs as in the last version keeps the same bytes
    object, without being built again: its streams see nothing new and
    write nothing."""

    __slots__ = ("table", "snapshot", "epoch", "_weighted", "_pool", "_payloads", "_built",
                 "_previous")  # fmt: skip

    def __init__(self, size: int) -> None:
        self.table = SubsetTable(_usable(size))
        self.snapshot: PoolSnapshot | None = None
        self.epoch = ""
        # Backend id -> the backend and its weight in the pool's list.
        self._weighted: dict[str, tuple[Backend, int]] = {}
        self._pool: Inputs = ()
        # This version's payloads by subset; payloads by their inputs, of
        # this version and of the one before.
        self._payloads: dict[tuple[str, ...], bytes | None] = {}
        self._built: dict[Inputs, bytes | None] = {}
        self._previous: dict[Inputs, bytes | None] = {}

    def update(self, snapshot: PoolSnapshot, epoch: str) -> None:
        """A new version of the pool: the table follows its listed backends."""
        self.table.resize(_usable(snapshot.config.subset_size))
        weighted = lists.weighted_backends(snapshot)
        self._weighted = {b.id: (b, w) for b, w in weighted}
        self.table.set_backends(self._weighted)
        self.snapshot = snapshot
        self.epoch = epoch
        config = snapshot.config
        self._pool = (config.fallback, config.drops, epoch)
        self._payloads = {}
        self._previous = self._built
        self._built = {}

    def join(self, client: object) -> None:
        self.table.join(client)

    def leave(self, client: object) -> None:
        self.table.leave(client)

    def key_for(self, client: object) -> tuple[str, ...]:
        """`client`'s subset: the feed's key for its payload."""
        return self.table.subset(client)

    def payload_for(self, client: object) -> bytes | None:
        """The response `client` should have now (None: nothing to send)."""
        return self.payload_of(self.table.subset(client))

    def payload_of(self, key: Hashable) -> bytes | None:
        """The response of the subset `key` (a tuple of backend ids)."""
        snapshot = self.snapshot
        if snapshot is None or not isinstance(key, tuple):
            return None
        try:
            return self._payloads[key]
        except KeyError:
            pass
        weighted = self._weighted
        inputs: Inputs = (
            self._pool,
            *((b, weighted[b][0].ip, weighted[b][0].port, weighted[b][1]) for b in key),
        )
        try:
            payload = self._built[inputs]
        except KeyError:
            try:
                payload = self._previous[inputs]
            except KeyError:
                payload = self._build(snapshot, key)
            self._built[inputs] = payload
        self._payloads[key] = payload
        return payload

    def _build(self, snapshot: PoolSnapshot, key: tuple[str, ...]) -> bytes | None:
        """lists.pool_payload for a subset, from the weights of this version."""
        if snapshot.config.fallback:
            return lists.FALLBACK_PAYLOAD
        entries = lists.entries_for(
            [self._weighted[b] for b in key], snapshot.config.drops, self.epoch
        )
        return lists.server_list_payload(entries) if entries else None

    @property
    def distinct(self) -> int:
        """Subsets whose response was looked up for the current version."""
        return len(self._payloads)
