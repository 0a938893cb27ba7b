"""Deterministic subsetting (balancer_server.subsets): the assignment is
balanced, and churn moves only the clients it must, by one member each;
the payloads a subset pool's streams get are the pool's list cut to their
subset."""

from __future__ import annotations

from collections import Counter
from collections.abc import Hashable, Sequence
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from balancer_server import lists
from balancer_server.subsets import SubsetPayloads, SubsetTable
from lookaside_proto.lb.v1 import load_balancer_pb2 as lb
from lookaside_registry.model import Backend, BackendState, DropRate, PoolConfig, PoolSnapshot

FAST = settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def table(size: int, backends: int, clients: int) -> SubsetTable:
    t = SubsetTable(size)
    t.set_backends(f"b{i}" for i in range(backends))
    for c in range(clients):
        t.join(c)
    return t


def subsets(t: SubsetTable, clients: Sequence[Hashable]) -> dict[Hashable, tuple[str, ...]]:
    return {c: t.subset(c) for c in clients}


def check_consistent(t: SubsetTable, clients: Sequence[Hashable]) -> None:
    """Every client has min(size, backends) distinct listed backends, and
    the table's loads count exactly the subsets handed out."""
    listed = set(t.ring)
    want = min(t.size, len(listed))
    held: Counter[str] = Counter()
    for c in clients:
        s = t.subset(c)
        assert len(s) == len(set(s)) == want
        assert set(s) <= listed
        held.update(s)
    assert held == Counter({b: n for b, n in t.loads().items() if n})


def spread(t: SubsetTable) -> int:
    loads = list(t.loads().values())
    return max(loads) - min(loads)


@FAST
@given(
    size=st.integers(1, 30),
    backends=st.integers(1, 80),
    clients=st.integers(0, 400),
)
def test_a_filled_table_is_balanced_to_two_clients(size: int, backends: int, clients: int) -> None:
    t = table(size, backends, clients)
    check_consistent(t, list(range(clients)))
    # Each backend carries clients * window / backends, give or take one:
    # far tighter than hashing each client independently (a binomial spread).
    assert spread(t) <= 2


@FAST
@given(
    size=st.integers(1, 12),
    backends=st.integers(2, 40),
    clients=st.integers(0, 200),
    data=st.data(),
)
def test_a_backend_leaving_changes_only_its_own_clients_by_one_member(
    size: int, backends: int, clients: int, data: st.DataObject
) -> None:
    t = table(size, backends, clients)
    everyone: list[Hashable] = list(range(clients))
    gone = f"b{data.draw(st.integers(0, backends - 1))}"
    before = subsets(t, everyone)
    t.set_backends(f"b{i}" for i in range(backends) if f"b{i}" != gone)
    check_consistent(t, everyone)
    for c in everyone:
        old, new = set(before[c]), set(t.subset(c))
        if gone not in old:
            assert t.subset(c) == before[c]
        elif backends > size:
            # Exactly one member replaced: the one that left.
            assert old - new == {gone} and len(new - old) == 1
        else:
            # The pool is no bigger than a subset: everyone has everything.
            assert new == old - {gone}


@FAST
@given(
    size=st.integers(1, 12),
    backends=st.integers(1, 40),
    clients=st.integers(0, 300),
)
def test_a_backend_joining_moves_only_the_clients_that_get_it(
    size: int, backends: int, clients: int
) -> None:
    t = table(size, backends, clients)
    everyone: list[Hashable] = list(range(clients))
    before = subsets(t, everyone)
    t.set_backends([*(f"b{i}" for i in range(backends)), "new"])
    check_consistent(t, everyone)
    changed = [c for c in everyone if t.subset(c) != before[c]]
    assert len(changed) == t.loads()["new"]
    for c in changed:
        old, new = set(before[c]), set(t.subset(c))
        assert new - old == {"new"}
        assert len(old - new) == (1 if backends >= size else 0)
    if clients and backends >= size:
        # The newcomer's share: the windows of the size - 1 backends before
        # it, each at most one client above the pool's mean.
        assert len(changed) <= (size - 1) * (clients // backends + 2)


EVENTS = st.lists(
    st.one_of(
        st.tuples(st.just("join"), st.integers(0, 60)),
        st.tuples(st.just("leave"), st.integers(0, 60)),
        st.tuples(st.just("add"), st.integers(0, 30)),
        st.tuples(st.just("remove"), st.integers(0, 30)),
        st.tuples(st.just("resize"), st.integers(1, 8)),
    ),
    max_size=80,
)


@FAST
@given(size=st.integers(1, 8), events=EVENTS)
def test_any_history_keeps_subsets_whole_and_loads_exact(
    size: int, events: list[tuple[str, int]]
) -> None:
    """Random joins, leaves, backend churn and resizes: subsets stay whole
    and distinct, the incremental loads equal a recount, a client's own
    join or leave never changes another client's subset, and a table
    rebuilt from scratch with the same anchors agrees."""
    t = SubsetTable(size)
    backends: set[str] = set()
    clients: set[int] = set()
    for kind, n in events:
        if kind == "join" or kind == "leave":
            others = sorted(clients - {n})
            before = subsets(t, list(others))
            if kind == "join":
                t.join(n)
                clients.add(n)
            else:
                t.leave(n)
                clients.discard(n)
            assert subsets(t, list(others)) == before
        elif kind == "add":
            backends.add(f"b{n}")
            t.set_backends(backends)
        elif kind == "remove":
            backends.discard(f"b{n}")
            t.set_backends(backends)
        else:
            t.resize(n)
        check_consistent(t, sorted(clients))
        fresh = list(t._score)
        t._rebuild()
        assert t._score == fresh
    if not backends:
        assert all(t.subset(c) == () for c in clients)


def test_the_goal_pool_is_within_a_tenth_of_its_mean_and_stays_there_after_a_departure() -> None:
    """subset_size 20 over 1,000 backends and 10,000 clients: 200 each;
    one backend leaving moves exactly its 200 clients."""
    t = table(20, 1000, 10_000)
    loads = t.loads()
    assert set(loads.values()) == {200}
    everyone: list[Hashable] = list(range(10_000))
    before = subsets(t, everyone)
    t.set_backends(f"b{i}" for i in range(1000) if i != 7)
    moved = [c for c in everyone if t.subset(c) != before[c]]
    assert len(moved) == 200 and all("b7" in before[c] for c in moved)
    assert all(180 <= n <= 220 for n in t.loads().values())


def test_a_pool_no_bigger_than_the_subset_lists_everything_to_everyone() -> None:
    t = table(5, 3, 10)
    assert {t.subset(c) for c in range(10)} == {tuple(t.ring)}
    t.set_backends(["b0", "b1", "b2", "b3", "b4", "b5"])
    # Past the subset size, subsets are cut to 5.
    assert all(len(t.subset(c)) == 5 for c in range(10))
    t.set_backends([])
    assert all(t.subset(c) == () for c in range(10))
    t.set_backends(["b9"])
    assert all(t.subset(c) == ("b9",) for c in range(10))


@pytest.mark.parametrize("size", [0, -1, 1001])
def test_bad_sizes_are_refused(size: int) -> None:
    with pytest.raises(ValueError, match=r"subset size .* out of range 1\.\.1000"):
        SubsetTable(size)


def snapshot(
    n: int, *, version: int = 1, drops: tuple[DropRate, ...] = (), **config: object
) -> PoolSnapshot:
    backends = tuple(
        Backend(id=f"id{i}", pool="p", host="h", ip=f"10.0.0.{i + 1}", port=80, weight=1 + i % 2)
        for i in range(n)
    )
    return PoolSnapshot("p", version, PoolConfig(name="p", drops=drops, **config), backends)  # type: ignore[arg-type]


def listed(payload: bytes | None) -> list[str]:
    assert payload is not None
    response = lb.LoadBalanceResponse.FromString(payload)
    return [s.load_balance_token.split(".")[0] for s in response.server_list.servers]


def test_subset_payloads_are_the_pools_list_cut_to_the_subset() -> None:
    snap = snapshot(10, subset_size=3, drops=(DropRate("overload", 250),))
    payloads = SubsetPayloads(3)
    payloads.update(snap, "e1")
    clients = list(range(10))
    for c in clients:
        payloads.join(c)
    for c in clients:
        entries = listed(payloads.payload_for(c))
        backends = {e for e in entries if e.startswith("id")}
        assert backends == set(payloads.table.subset(c))
        counts = Counter(entries)
        # Weights as in the pool (1 or 2 copies), a quarter of the slots dropped.
        weights = {f"id{i}": 1 + i % 2 for i in range(10)}
        per_weight = {counts[b] // weights[b] for b in backends}
        assert len(per_weight) == 1
        assert counts["overload"] * 4 == len(entries)
    # Streams with the same subset share one payload object.
    assert payloads.distinct == len({payloads.table.subset(c) for c in clients})


def test_a_subset_that_did_not_change_keeps_its_bytes_object() -> None:
    payloads = SubsetPayloads(3)
    payloads.update(snapshot(10, subset_size=3), "e1")
    for c in range(10):
        payloads.join(c)
    before = {c: payloads.payload_for(c) for c in range(10)}
    old_subsets = {c: payloads.table.subset(c) for c in range(10)}
    gone = old_subsets[0][0]
    smaller = snapshot(10, version=2, subset_size=3)
    smaller = PoolSnapshot(
        "p",
        2,
        smaller.config,
        tuple(
            b if b.id != gone else Backend(**{**b.to_dict(), "state": BackendState.DRAINING})  # type: ignore[arg-type]
            for b in smaller.backends
        ),
    )
    payloads.update(smaller, "e1")
    for c in range(10):
        if gone in old_subsets[c]:
            assert payloads.payload_for(c) is not before[c]
            assert gone not in listed(payloads.payload_for(c))
        else:
            assert payloads.payload_for(c) is before[c]


def test_fallback_and_panic_apply_to_subset_pools() -> None:
    payloads = SubsetPayloads(2)
    payloads.join("c")
    payloads.update(snapshot(4, subset_size=2, fallback=True), "e1")
    assert payloads.payload_for("c") == lists.FALLBACK_PAYLOAD
    # Every backend unhealthy: the panic list, cut to the subset.
    snap = snapshot(4, version=2, subset_size=2)
    sick = tuple(
        Backend(**{**b.to_dict(), "state": BackendState.UNHEALTHY})  # type: ignore[arg-type]
        for b in snap.backends
    )
    payloads.update(PoolSnapshot("p", 2, snap.config, sick), "e1")
    assert len(set(listed(payloads.payload_for("c")))) == 2


class Recorder:
    """A feed subscriber that writes at once: the payloads it was sent."""

    def __init__(self) -> None:
        self.feed: Any = None
        self.subset: Any = None
        self.sent: list[bytes] = []
        self.owed: list[int] = []  # the fan-outs this stream wrote for

    def offer(self, generation: int = 0) -> bool:
        payload = self.feed.payload_for(self.subset)
        if payload is None or (self.sent and payload is self.sent[-1]):
            return False
        if generation:
            self.owed.append(generation)
            self.feed.owe()
        self.sent.append(payload)
        if generation:
            self.feed.delivered()
        return True

    def move(self, feed: Any) -> None:
        raise AssertionError("not moved in these tests")


def test_the_feed_switches_between_subsets_and_whole_lists() -> None:
    from balancer_server.feeds import FeedHub

    hub = FeedHub("e1")
    hub.on_change("p", snapshot(8, subset_size=3))
    feed = hub.feeds["p"]
    streams = [Recorder() for _ in range(8)]
    for s in streams:
        s.feed = feed
        feed.subscribe(s)
    assert all(len(set(listed(s.sent[-1]))) == 3 for s in streams)
    held = Counter(b for s in streams for b in set(listed(s.sent[-1])))
    assert set(held.values()) == {3}  # 8 streams x 3 over 8 backends
    # One backend drained: only its streams get a list, and the fan-out
    # waits for those only.
    gone = "id4"
    had = [s for s in streams if gone in listed(s.sent[-1])]
    counts = [len(s.sent) for s in streams]
    drained = snapshot(8, version=2, subset_size=3)
    drained = PoolSnapshot(
        "p",
        2,
        drained.config,
        tuple(
            Backend(**{**b.to_dict(), "state": BackendState.DRAINING}) if b.id == gone else b  # type: ignore[arg-type]
            for b in drained.backends
        ),
    )
    hub.on_change("p", drained)
    assert [s for s in streams if feed.generation in s.owed] == had and len(had) == 3
    for s, n in zip(streams, counts, strict=True):
        assert len(s.sent) == n + (1 if s in had else 0)
        assert gone not in listed(s.sent[-1])
    # Subsetting off: every stream gets the whole list.
    hub.on_change("p", snapshot(8, version=3))
    assert feed.subsets is None
    assert all(len(set(listed(s.sent[-1]))) == 8 for s in streams)
    # And on again.
    hub.on_change("p", snapshot(8, version=4, subset_size=2))
    assert all(len(set(listed(s.sent[-1]))) == 2 for s in streams)
    for s in streams:
        feed.unsubscribe(s)
    assert feed.subsets is not None and len(feed.subsets.table) == 0


@pytest.mark.parametrize(("stored", "used"), [(5000, 1000), ("7", 7), (2.9, 2)])
def test_a_hand_edited_subset_size_is_clamped_not_fatal(stored: object, used: int) -> None:
    payloads = SubsetPayloads(stored)  # type: ignore[arg-type]
    assert payloads.table.size == used


def test_an_infinite_hand_edited_subset_size_is_clamped() -> None:
    assert SubsetPayloads(float("inf")).table.size == 1000  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("stored", "on"),
    [(3, True), (2.5, True), (0, False), (-1, False), (True, False), ("3", False), (None, False)],
)
def test_only_a_positive_number_turns_subsetting_on(stored: object, on: bool) -> None:
    from balancer_server.subsets import subsetting

    assert subsetting(stored) is on
