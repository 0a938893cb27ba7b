"""The fan-out's per-stream costs: one payload per pool version and subset
key, offered in one pass, and the cyclic garbage collector kept out of it
(balancer_server.feeds)."""

from __future__ import annotations

import asyncio
import gc
import subprocess
import sys
import textwrap
from collections.abc import Hashable

import pytest

from balancer_server.feeds import GcHold, PoolFeed


class Stream:
    """A stream as the feed sees it: writes at once, records what it wrote."""

    def __init__(self, feed: PoolFeed, subset: Hashable = None) -> None:
        self.feed = feed
        self.subset = subset
        self.written: list[bytes] = []
        self.offered: list[int] = []

    def offer(self, generation: int = 0) -> bool:
        self.offered.append(generation)
        payload = self.feed.payload_for(self.subset)
        if payload is None or (self.written and self.written[-1] is payload):
            return False
        self.written.append(payload)
        return False  # written at once: the fan-out waits for no one

    def move(self, feed: PoolFeed) -> None:
        raise AssertionError("not moved here")


def builder(version: int, built: list[tuple[int, Hashable]], same: Hashable = "b"):  # type: ignore[no-untyped-def]
    """Payloads of one version: key `same` has the same bytes in every
    version, every other key changes."""

    def build(key: Hashable) -> bytes | None:
        built.append((version, key))
        if key == "empty":
            return None
        return f"{key}".encode() if key == same else f"{key}@{version}".encode()

    return build


def test_one_payload_per_version_and_subset_shared_by_its_streams() -> None:
    feed = PoolFeed("svc")
    streams = [Stream(feed, key) for key in ["a", "b", None] * 50]
    for s in streams:
        feed.subscribers.add(s)
    built: list[tuple[int, Hashable]] = []
    feed.publish(builder(1, built))
    assert sorted(built, key=repr) == sorted([(1, "a"), (1, "b"), (1, None)], key=repr)
    for key in ("a", "b", None):
        first = [s.written[-1] for s in streams if s.subset == key]
        assert all(p is first[0] for p in first)  # one object, shared
    assert feed.payload_for("a") == b"a@1" and feed.payload == b"None@1"

    built.clear()
    feed.publish(builder(2, built))
    assert len(built) == 3
    # Key "b" built the same bytes: its streams keep the object they sent
    # and write nothing.
    assert all(len(s.written) == (1 if s.subset == "b" else 2) for s in streams)
    assert feed.generation == 2

    # A key first used after the version was published is built then, once.
    built.clear()
    late = [Stream(feed, "c") for _ in range(3)]
    for s in late:
        feed.subscribe(s)
    assert built == [(2, "c")] and all(s.written == [b"c@2"] for s in late)


def test_a_version_that_changes_no_payload_is_no_fanout() -> None:
    feed = PoolFeed("svc")
    s = Stream(feed, "b")
    feed.subscribe(s)
    feed.publish(builder(1, [], same="b"))
    generation = feed.generation
    s.offered.clear()
    feed.publish(builder(2, [], same="b"))
    assert feed.generation == generation and s.offered == []
    # Nothing to send (no serving backend) keeps the list the streams have.
    e = Stream(feed, "empty")
    feed.subscribe(e)
    feed.publish(builder(3, []))
    assert e.written == [] and feed.payload_for("empty") is None


@pytest.mark.asyncio
async def test_the_collector_is_held_off_until_the_last_hold_is_released() -> None:
    assert gc.isenabled()
    hold = GcHold(max_seconds=30.0)
    try:
        hold.hold("pool-a")
        hold.hold("pool-b")
        assert not gc.isenabled() and hold.holding
        hold.release("pool-a")
        assert not gc.isenabled()
        hold.release("pool-b")
        assert gc.isenabled() and not hold.holding
    finally:
        hold.release_all()
        gc.enable()


@pytest.mark.asyncio
async def test_a_fanout_that_never_ends_lets_the_collector_go_at_the_deadline() -> None:
    hold = GcHold(max_seconds=0.05)
    try:
        hold.hold("stuck")
        assert not gc.isenabled()
        await asyncio.sleep(0.2)
        assert gc.isenabled() and not hold.holding
    finally:
        hold.release_all()
        gc.enable()


def test_a_collector_someone_else_turned_off_is_left_off() -> None:
    hold = GcHold()
    gc.disable()
    try:
        hold.hold("pool")
        hold.release("pool")
        assert not gc.isenabled()
    finally:
        gc.enable()


def test_installed_the_survivors_of_full_collections_are_frozen_and_thawed() -> None:
    # In a process of its own: freezing is process-wide.
    code = textwrap.dedent(
        """
        import gc, weakref
        from balancer_server.feeds import GcHold

        hold = GcHold(thaw_seconds=0.0)
        hold.install()
        assert gc.get_freeze_count() > 0
        class Node: pass
        a, b = Node(), Node()
        a.other, b.other = b, a
        gone = weakref.ref(a)
        gc.collect()  # a and b survive it: frozen
        frozen = gc.get_freeze_count()
        del a, b
        gc.collect()
        assert gone() is not None, "a frozen cycle waits for the thaw"
        hold.hold("pool")
        hold.release("pool")  # thaw_seconds 0: a thaw at every fan-out's end
        assert gone() is None, "the thaw collected it"
        assert gc.get_freeze_count() > 0
        print("ok", frozen)
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.startswith("ok ")


class SlowStream(Stream):
    """Owes the fan-out and writes when told; or fails at once."""

    def __init__(self, feed: PoolFeed, fail: bool = False) -> None:
        super().__init__(feed)
        self.fail = fail
        self.owing = 0

    def offer(self, generation: int = 0) -> bool:
        if generation:
            self.owing = generation
            self.feed.owe()
            if self.fail:  # its RPC ended as the write started
                self.feed.subscribers.discard(self)
                self.feed.delivered()
        return True

    def finish(self) -> float | None:
        return self.feed.delivered()


def test_the_fanout_ends_with_its_last_write_even_when_a_stream_fails_inside_it() -> None:
    feed = PoolFeed("svc")
    failing = SlowStream(feed, fail=True)
    slow = [SlowStream(feed) for _ in range(3)]
    for s in [failing, *slow]:  # in whatever order the set gives
        feed.subscribers.add(s)
    gc_was = gc.isenabled()
    try:
        feed.publish(builder(1, []))
        assert feed.pending == 3
        assert not gc.isenabled()  # held: the fan-out is under way
        assert slow[0].finish() is None and slow[1].finish() is None
        took = slow[2].finish()
        assert took is not None and took >= 0
        assert gc.isenabled() == gc_was and feed.pending == 0
    finally:
        if gc_was:
            gc.enable()
