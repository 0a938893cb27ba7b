"""PoolFeeds: the per-pool payloads that the streams of a pool send.

A feed holds the serialized responses for the pool's current version and
the streams that send them. A response is serialized once per version and
subset key, whatever the number of streams that send it: a stream's
`subset` (None: the whole pool; otherwise a key that the pool's payload
builder understands, such as the subset's anchor) picks its payload, and
streams of one key share one bytes object. A new version's payload that
equals the previous one for a key is replaced by the previous object, so
a stream compares what it sent by identity and writes nothing new.

Publishing a new version offers it to every stream at once, in one pass
(the fan-out): each stream starts its write right there, without a task of
its own. A stream that is still writing an older payload takes the newest
when that write is done, so one slow client delays no one else. Nothing
per stream runs on a timer, and nothing per stream waits between changes.

The cyclic garbage collector is held off while a fan-out is in flight
(`GcHold`): with tens of thousands of streams, a collection that starts in
the middle of one walks every stream's objects and stalls all the writes
behind it. It is let go when the fan-out's last write is done, or after
GC_HOLD_MAX_S whatever happens.

A pool with a subset size (balancer_server.subsets) keeps a table of its
streams: each stream's key is then its subset (a tuple of backend ids),
set when it subscribes and again on every version, before the fan-out.

Streams follow the pools: a stream is bound to the most exact pool its
service name may mean (`name_candidates`). When a more exact pool appears,
or the pool it is bound to is deleted while a less exact one exists, the
hub moves the stream, which then sends the new pool's list.
"""

from __future__ import annotations

import asyncio
import gc
import re
import time
from collections.abc import Callable, Hashable
from typing import Protocol

from balancer_server import lists
from balancer_server.subsets import SubsetPayloads, subsetting
from lookaside_registry.model import PoolSnapshot

DEFAULT_REPORT_INTERVAL_MS = 10_000
# The longest the garbage collector is held off for one fan-out.
GC_HOLD_MAX_S = 2.0
# How often objects frozen after a fan-out go back to the collector.
GC_THAW_S = 600.0

# Builds the payload of one subset key for a pool version: bytes, or None
# for "nothing to send" (the streams keep the list they have).
PayloadBuilder = Callable[[Hashable], bytes | None]


class Subscriber(Protocol):
    @property
    def feed(self) -> PoolFeed: ...

    subset: Hashable
    """Which of the feed's payloads this stream sends (None: the whole
    pool's; set by the feed when the pool has a subset size)."""

    def offer(self, generation: int = 0) -> bool:
        """Start writing the feed's current payload for the stream's subset,
        unless it was already written or a write is under way. True when the
        stream has yet to write it. From the fan-out of `generation`, a
        stream that has yet to write calls `feed.owe()` first, and
        `feed.delivered()` once written (or gone)."""

    def move(self, feed: PoolFeed) -> None:
        """Leave the current feed for `feed` and send its payload."""


class GcHold:
    """Keeps the cyclic garbage collector out of the fan-outs.

    Each fan-out holds the collector off until its last write is done; it
    is enabled again when no fan-out holds it, or `max_seconds` after the
    first hold at the latest. Nothing happens when the collector was off to
    begin with (someone else owns it then).

    In a balancer process (`install`), the survivors of every full
    collection are frozen out of later ones (`gc.freeze`): they are the
    streams and their gRPC calls, long-lived, and a full collection walking
    every stream's objects again took half a second at 10,000 streams, in
    the middle of whatever came next. Garbage cycles among frozen objects
    wait for the next thaw: every `thaw_seconds`, at the end of a fan-out,
    the frozen objects go back to the collector and one full collection
    runs there and then."""

    def __init__(self, max_seconds: float = GC_HOLD_MAX_S, thaw_seconds: float = GC_THAW_S) -> None:
        self.max_seconds = max_seconds
        self.thaw_seconds = thaw_seconds
        self.holders: set[object] = set()
        self.timer: asyncio.TimerHandle | None = None
        self.installed = False
        self.thawed_at = time.monotonic()
        self.held = 0  # fan-outs that held it

    def install(self) -> None:
        """Freezes what is alive now (the process after start-up) and the
        survivors of every later full collection."""
        if not self.installed:
            self.installed = True
            gc.callbacks.append(self._collected)
        gc.freeze()

    def _collected(self, phase: str, info: dict[str, int]) -> None:
        if phase == "stop" and info["generation"] == 2:
            gc.freeze()

    def hold(self, holder: object) -> None:
        if not self.holders:
            if not gc.isenabled():
                return
            gc.disable()
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:
                loop = None
            if loop is not None:
                self.timer = loop.call_later(self.max_seconds, self.release_all)
        self.holders.add(holder)
        self.held += 1

    def release(self, holder: object) -> None:
        if holder in self.holders:
            self.holders.discard(holder)
            if not self.holders:
                self.release_all()

    def release_all(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        if not self.holders and gc.isenabled():
            return  # not holding it
        self.holders.clear()
        gc.enable()
        now = time.monotonic()
        if self.installed and now - self.thawed_at >= self.thaw_seconds:
            self.thawed_at = now
            gc.unfreeze()
            gc.collect()  # whose survivors _collected freezes

    @property
    def holding(self) -> bool:
        return bool(self.holders)


GC_HOLD = GcHold()


def _unbuilt(key: Hashable) -> bytes | None:
    return None


def _fresh(payload: bytes | None, before: bytes | None) -> bytes | None:
    """`before` when `payload` is None (nothing to send) or equal to it."""
    if payload is None or payload == before:
        return before
    return payload


class PoolFeed:
    __slots__ = (
        "name",
        "payloads",
        "build",
        "subscribers",
        "report_interval_ms",
        "exists",
        "published_at",
        "pending",
        "publishing",
        "generation",
        "subsets",
    )

    def __init__(self, name: str) -> None:
        self.name = name
        # Per subset key, the payload of the current version (built on
        # first use).
        self.payloads: dict[Hashable, bytes | None] = {}
        self.build: PayloadBuilder = _unbuilt
        self.subscribers: set[Subscriber] = set()
        self.report_interval_ms = DEFAULT_REPORT_INTERVAL_MS
        self.exists = False
        # For the fan-out metric: when the current version was published,
        # and how many of the streams that owed it have not written it yet.
        self.published_at = 0.0
        self.pending = 0
        self.publishing = False
        self.generation = 0
        # Set while the pool has a subset size: the streams' subsets, and
        # one payload per subset in use.
        self.subsets: SubsetPayloads | None = None

    @property
    def streams(self) -> int:
        return len(self.subscribers)

    @property
    def payload(self) -> bytes | None:
        """The whole pool's payload (subset key None)."""
        return self.payload_for(None)

    def payload_for(self, key: Hashable) -> bytes | None:
        """The current payload of subset `key`, built once per version."""
        try:
            return self.payloads[key]
        except KeyError:
            payload = self.payloads[key] = self.build(key)
            return payload

    def subscribe(self, subscriber: Subscriber) -> None:
        self.subscribers.add(subscriber)
        if self.subsets is not None:
            self.subsets.join(subscriber)
            subscriber.subset = self.subsets.key_for(subscriber)
        subscriber.offer()

    def unsubscribe(self, subscriber: Subscriber) -> None:
        self.subscribers.discard(subscriber)
        if self.subsets is not None:
            self.subsets.leave(subscriber)
        subscriber.subset = None

    def publish_subsets(self, snapshot: PoolSnapshot, epoch: str) -> None:
        """A new version of a pool with a subset size: the table follows the
        pool's backends, each stream's key becomes its (maybe new) subset,
        and the subsets' payloads are published; a stream whose subset's
        payload did not change writes nothing."""
        subsets = self.subsets
        if subsets is None:
            subsets = self.subsets = SubsetPayloads(snapshot.config.subset_size)
            for subscriber in self.subscribers:
                subsets.join(subscriber)
        subsets.update(snapshot, epoch)
        for subscriber in self.subscribers:
            subscriber.subset = subsets.key_for(subscriber)
        self.publish(subsets.payload_of)

    def publish_whole(self, build: PayloadBuilder) -> None:
        """A new version of a pool without a subset size."""
        if self.subsets is not None:
            # Subsetting turned off: every stream takes the whole list.
            self.subsets = None
            for subscriber in self.subscribers:
                subscriber.subset = None
        self.publish(build)

    def publish(self, build: PayloadBuilder) -> None:
        """A new version: builds the payload of every subset key in use, and
        offers it to every stream (the streams whose payload did not change
        write nothing). A key whose new payload is None, or equal to the
        current one, keeps the current object, so streams compare by
        identity."""
        old = self.payloads
        new: dict[Hashable, bytes | None] = {}
        changed = False
        for key in {s.subset for s in self.subscribers}:
            payload = new[key] = _fresh(build(key), old.get(key))
            changed = changed or payload is not old.get(key)
        self.payloads = new
        # A key not in use yet is built on first use, from this version.
        self.build = lambda key: _fresh(build(key), old.get(key))
        if not changed:
            return
        self.generation += 1
        self.published_at = time.perf_counter()
        generation = self.generation
        GC_HOLD.hold(self)
        self.pending = 0
        self.publishing = True
        try:
            for subscriber in list(self.subscribers):
                subscriber.offer(generation)
        finally:
            self.publishing = False
        if self.pending <= 0:
            self.pending = 0
            GC_HOLD.release(self)

    def owe(self) -> None:
        """Called by a stream that takes on the current version's fan-out
        (from its `offer(generation)`): the fan-out waits for its write."""
        self.pending += 1

    def delivered(self) -> float | None:
        """Called by a stream that owed the current version's payload, once
        it has written it (or has gone); the seconds the whole fan-out took
        when it was the last."""
        self.pending -= 1
        if self.pending == 0 and not self.publishing:
            GC_HOLD.release(self)
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

    def builder(self, snapshot: PoolSnapshot) -> PayloadBuilder:
        """The payload builder of a pool version: the whole pool's list for
        every key."""
        epoch = self.epoch

        def build(key: Hashable) -> bytes | None:
            return lists.pool_payload(snapshot, epoch)

        return build

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
        if subsetting(snapshot.config.subset_size):
            feed.publish_subsets(snapshot, self.epoch)
        else:
            feed.publish_whole(self.builder(snapshot))
        if appeared:
            if self.on_appear is not None:
                self.on_appear(feed)
            self._rebind(pool)
