"""PoolFeeds: the per-pool payload that every stream of the pool sends.

A feed holds the serialized response for the pool's current version and
the streams that send it. Publishing a new payload offers it to every
stream at once; a stream that is still writing an older one takes the
newest when that write is done, so one slow client delays no one else.
Nothing per stream runs on a timer, and nothing per stream waits between
changes.

Streams follow the pools: a stream is bound to the most exact pool its
service name may mean (`name_candidates`). When a more exact pool appears,
or the pool it is bound to is deleted while a less exact one exists, the
hub moves the stream, which then sends the new pool's list.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from typing import Protocol

from balancer_server import lists
from lookaside_registry.model import PoolSnapshot

DEFAULT_REPORT_INTERVAL_MS = 10_000


class Subscriber(Protocol):
    @property
    def feed(self) -> PoolFeed: ...

    def offer(self) -> None:
        """Start writing the feed's current payload, unless it was already
        written or a write is under way."""

    def move(self, feed: PoolFeed) -> None:
        """Leave the current feed for `feed` and send its payload."""


class PoolFeed:
    __slots__ = (
        "name",
        "payload",
        "subscribers",
        "report_interval_ms",
        "exists",
        "published_at",
        "pending",
        "generation",
    )

    def __init__(self, name: str) -> None:
        self.name = name
        self.payload: bytes | None = None
        self.subscribers: set[Subscriber] = set()
        self.report_interval_ms = DEFAULT_REPORT_INTERVAL_MS
        self.exists = False
        # For the fan-out metric: when the current payload was published,
        # and how many of the streams open then have not written it yet.
        self.published_at = 0.0
        self.pending = 0
        self.generation = 0

    @property
    def streams(self) -> int:
        return len(self.subscribers)

    def subscribe(self, subscriber: Subscriber) -> None:
        self.subscribers.add(subscriber)
        subscriber.offer()

    def unsubscribe(self, subscriber: Subscriber) -> None:
        self.subscribers.discard(subscriber)

    def publish(self, payload: bytes | None) -> None:
        """Sets a new payload and offers it to every stream. A payload equal
        to the current one is dropped here, once, so streams can compare by
        identity."""
        if payload is None or payload == self.payload:
            return
        self.payload = payload
        self.published_at = time.perf_counter()
        self.pending = len(self.subscribers)
        self.generation += 1
        for subscriber in list(self.subscribers):
            subscriber.offer()

    def delivered(self) -> float | None:
        """Called by a stream that was open when the current payload was
        published, once it has written it; the seconds the whole fan-out
        took when it was the last."""
        self.pending -= 1
        if self.pending == 0:
            return time.perf_counter() - self.published_at
        return None


_PORT_RE = re.compile(r":\d{1,5}$")


def name_candidates(name: str) -> list[str]:
    """Pool names a client's service name may mean, most specific first:
    as given, without ":port", then its first DNS label."""
    out = [name]
    host = name
    if host.startswith("[") and "]" in host:  # [v6]:port
        host = host[1 : host.index("]")]
    else:
        host = _PORT_RE.sub("", host)
    if host not in out:
        out.append(host)
    label = host.split(".", 1)[0]
    if label and label not in out:
        out.append(label)
    return out


class FeedHub:
    """All pool feeds of one balancer process."""

    def __init__(self, epoch: str) -> None:
        self.epoch = epoch
        self.feeds: dict[str, PoolFeed] = {}
        # Open streams by the service name they asked for.
        self.streams_by_name: dict[str, set[Subscriber]] = {}
        # Called with a feed whose pool has just appeared (its streams were
        # waiting on it, counted under no pool).
        self.on_appear: Callable[[PoolFeed], None] | None = None

    def feed(self, pool: str) -> PoolFeed:
        feed = self.feeds.get(pool)
        if feed is None:
            feed = self.feeds[pool] = PoolFeed(pool)
        return feed

    def resolve(self, name: str) -> PoolFeed:
        """The feed a service name maps to. An unknown name is bound to its
        first DNS label (without port): the stream waits there until that
        pool appears."""
        candidates = name_candidates(name)
        for candidate in candidates:
            feed = self.feeds.get(candidate)
            if feed is not None and feed.exists:
                return feed
        return self.feed(candidates[-1])

    def _best(self, name: str) -> PoolFeed | None:
        for candidate in name_candidates(name):
            feed = self.feeds.get(candidate)
            if feed is not None and feed.exists:
                return feed
        return None

    def track(self, name: str, subscriber: Subscriber) -> None:
        """Keeps an open stream bound to the best pool for `name`."""
        self.streams_by_name.setdefault(name, set()).add(subscriber)
        best = self._best(name)
        if best is not None and best is not subscriber.feed:
            # The pool appeared between resolve() and now.
            subscriber.move(best)

    def untrack(self, name: str, subscriber: Subscriber) -> None:
        streams = self.streams_by_name.get(name)
        if streams is not None:
            streams.discard(subscriber)
            if not streams:
                del self.streams_by_name[name]

    def _rebind(self, pool: str) -> None:
        """After `pool` appeared or went: moves the streams it concerns."""
        for name, streams in list(self.streams_by_name.items()):
            if pool not in name_candidates(name):
                continue
            best = self._best(name)
            if best is None:
                continue  # no pool left for it: streams keep the list they have
            for subscriber in list(streams):
                if subscriber.feed is not best:
                    subscriber.move(best)

    def on_change(self, pool: str, snapshot: PoolSnapshot | None) -> None:
        feed = self.feed(pool)
        if snapshot is None:
            # Pool deleted: its streams move to a less exact pool if there is
            # one, and otherwise keep the list they have.
            if feed.exists:
                feed.exists = False
                self._rebind(pool)
            return
        appeared = not feed.exists
        feed.exists = True
        feed.report_interval_ms = snapshot.config.report_interval_ms
        feed.publish(lists.pool_payload(snapshot, self.epoch))
        if appeared:
            if self.on_appear is not None:
                self.on_appear(feed)
            self._rebind(pool)
