"""Turns a pool snapshot into grpclb server lists.

A list is serialized once per pool version, whatever the number of streams
that send it. Weights become repetition, interleaved smoothly (no runs of
one backend), and drop entries are spread evenly through the list.
"""

from __future__ import annotations

import ipaddress
import math
from collections.abc import Collection, Hashable, Sequence
from dataclasses import dataclass
from functools import reduce
from typing import TypeVar

from google.protobuf.duration_pb2 import Duration

from lookaside_proto.lb.v1 import load_balancer_pb2 as lb
from lookaside_registry.model import Backend, DropRate, PoolSnapshot

T = TypeVar("T", bound=Hashable)

MAX_LIST_LEN = 1000
# C-core ignores tokens of 50 bytes or more.
MAX_TOKEN_LEN = 49


@dataclass(frozen=True, slots=True)
class Entry:
    """One slot of a server list: a backend, or a drop with its reason."""

    ip: str
    port: int
    token: str
    drop: bool = False


def interleave(counts: Sequence[tuple[T, int]]) -> list[T]:
    """Spreads each item's `count` copies evenly around a ring.

    Items are placed largest count first, each copy at its ideal position
    (k * length / count) or the next free slot after it. The list is a ring
    (clients wrap around), so spacing is judged cyclically: an item with at
    most half of the slots never lands next to itself in practice, and equal
    counts give a plain a, b, c, a, b, c order.
    """
    length = sum(c for _, c in counts)
    slots: list[T | None] = [None] * length
    order = sorted(range(len(counts)), key=lambda i: -counts[i][1])
    for i in order:
        item, n = counts[i]
        for k in range(n):
            j = (k * length) // n
            while slots[j] is not None:
                j = (j + 1) % length
            slots[j] = item
    return [s for s in slots if s is not None]


def _largest_remainder(total: int, weights: Sequence[int]) -> list[int]:
    """`total` slots shared in proportion to `weights`, each at least one:
    the sum is `total`, or len(weights) when that is more."""
    wsum = sum(weights)
    exact = [total * w / wsum for w in weights]
    counts = [max(1, math.floor(x)) for x in exact]
    # The floor of one slot for tiny shares can overshoot: take the excess
    # back from those furthest above their exact share.
    while sum(counts) > max(total, len(counts)):
        i = max((j for j, c in enumerate(counts) if c > 1), key=lambda j: counts[j] - exact[j])
        counts[i] -= 1
    order = sorted(range(len(weights)), key=lambda i: exact[i] - math.floor(exact[i]), reverse=True)
    i = 0
    while sum(counts) < total and order:
        counts[order[i % len(order)]] += 1
        i += 1
    return counts


def slot_counts(
    weights: Sequence[int], drops: Sequence[int], max_len: int = MAX_LIST_LEN
) -> tuple[list[int], list[int]]:
    """How many slots each backend and each drop reason gets.

    weights: backend weights (>= 1). drops: per-mille rates. The shortest
    list with exact shares is used when it fits in max_len, otherwise a list
    of max_len with the shares rounded.
    """
    drops_total = sum(drops)
    if not weights:
        return [], []
    if drops_total >= 1000:
        return [0] * len(weights), _largest_remainder(len(drops), drops) if drops else []
    g = reduce(math.gcd, weights)
    w = [x // g for x in weights]
    wsum = sum(w)
    if drops_total == 0:
        if wsum <= max_len:
            return w, [0] * len(drops)
        return _largest_remainder(max_len, w), [0] * len(drops)
    d = reduce(math.gcd, [1000, *[p for p in drops if p]])
    denom = 1000 // d
    per_round_drops = [p // d for p in drops]
    keep = denom - sum(per_round_drops)
    k = wsum // math.gcd(keep, wsum)
    length = k * denom
    if length <= max_len:
        per_unit = k * keep // wsum
        return [x * per_unit for x in w], [a * k for a in per_round_drops]
    drop_slots = [round(max_len * p / 1000) for p in drops]
    keep_slots = max(len(w), max_len - sum(drop_slots))
    if keep_slots + sum(drop_slots) > max_len:
        # Every backend needs its slot: the drops share what is left.
        rates = [p for p in drops if p]
        shares = iter(_largest_remainder(max_len - keep_slots, rates))
        drop_slots = [next(shares) if p else 0 for p in drops]
    return _largest_remainder(keep_slots, w), drop_slots


# A backend as fast as the fastest gets this many slots per unit of weight;
# a slower one gets fewer, down to one: the floor that keeps it in the list
# (and its latency measured) without giving it real traffic.
LOAD_AWARE_SCALE = 100
# Latencies within this factor of the fastest count as equal, so that
# backends that differ only by noise keep equal shares.
LOAD_AWARE_DEADBAND = 1.5


def load_aware_weights(backends: Sequence[Backend]) -> list[int]:
    """Weights for a least_loaded pool, from the latency backends report in
    heartbeats (smoothed, and republished only on a 20% move, so lists are
    not re-sent on noise).

    A backend within 1.5x of the fastest keeps its full weight; beyond that
    its weight falls with the cube of how much slower it is: 3x slower gets
    1/8, 10x slower the floor of one slot in a hundred. A list only sees
    periodic reports, not each call, so the policy is decisive on purpose: a
    slow backend should see almost none of the traffic until it recovers
    (its reports keep coming from the floor share and from its own probes).
    A backend with no report yet counts as the fastest.
    """
    known = [b.latency_published_ms for b in backends if b.latency_published_ms > 0]
    if not known:
        return [b.weight for b in backends]
    fastest = min(known)
    out = []
    for b in backends:
        latency = b.latency_published_ms if b.latency_published_ms > 0 else fastest
        slower = latency / fastest
        factor = 1.0 if slower <= LOAD_AWARE_DEADBAND else (LOAD_AWARE_DEADBAND / slower) ** 3
        out.append(max(1, round(LOAD_AWARE_SCALE * factor)) * b.weight)
    return out


def serving_set(snapshot: PoolSnapshot) -> tuple[Backend, ...]:
    """The backends that take calls at this pool version, for every protocol
    (grpclb lists, xDS assignments): the SERVING ones (including those the
    panic guard holds), or in panic mode (Envoy's panic threshold), when no
    backend looks healthy, the unhealthy and ejected ones rather than none.
    Drained and disabled backends stay out: an operator asked for that."""
    serving = snapshot.serving
    if not serving:
        serving = tuple(b for b in snapshot.backends if b.state.faulty)
    return serving


def serving_weights(snapshot: PoolSnapshot, serving: Sequence[Backend]) -> list[int]:
    """The weights of `serving` (from serving_set): as registered, or
    load-aware for a least_loaded pool."""
    if snapshot.config.policy == "least_loaded":
        return load_aware_weights(serving)
    return [b.weight for b in serving]


def weighted_backends(snapshot: PoolSnapshot) -> list[tuple[Backend, int]]:
    """The serving set with the weight each backend has in the pool's list."""
    serving = serving_set(snapshot)
    return list(zip(serving, serving_weights(snapshot, serving), strict=True))


def build_entries(
    snapshot: PoolSnapshot,
    epoch: str,
    max_len: int = MAX_LIST_LEN,
    subset: Collection[str] | None = None,
) -> list[Entry]:
    """The list entries for a pool's serving backends and drop rates; with
    `subset` (backend ids), for those of them only (balancer_server.subsets),
    their weights as in the whole pool's list.

    Backend tokens are "<backend id>.<epoch>": the epoch differs per balancer
    process, so a restarted balancer's lists never equal the old ones (a
    C-core client in fallback ignores a list equal to its last one).
    """
    weighted = weighted_backends(snapshot)
    if subset is not None:
        weighted = [(b, w) for b, w in weighted if b.id in subset]
    return entries_for(weighted, snapshot.config.drops, epoch, max_len)


def entries_for(
    weighted: Sequence[tuple[Backend, int]],
    drop_rates: Sequence[DropRate],
    epoch: str,
    max_len: int = MAX_LIST_LEN,
) -> list[Entry]:
    """The list entries for these backends (with their weights) and drop
    rates (see build_entries)."""
    if not weighted:
        return []
    drops = [d for d in drop_rates if d.per_mille > 0]
    weights = [w for _, w in weighted]
    backend_slots, drop_slots = slot_counts(weights, [d.per_mille for d in drops], max_len)
    items: list[tuple[Entry, int]] = []
    for (b, _), n in zip(weighted, backend_slots, strict=True):
        token = f"{b.id}.{epoch}"[:MAX_TOKEN_LEN]
        items.append((Entry(b.ip, b.port, token), n))
    for d, n in zip(drops, drop_slots, strict=True):
        items.append((Entry("", 0, d.token[:MAX_TOKEN_LEN], drop=True), n))
    return interleave([(e, n) for e, n in items if n > 0])


def server_list_payload(entries: Sequence[Entry]) -> bytes:
    servers = []
    for e in entries:
        if e.drop:
            servers.append(lb.Server(load_balance_token=e.token, drop=True))
        else:
            servers.append(
                lb.Server(
                    ip_address=ipaddress.ip_address(e.ip).packed,
                    port=e.port,
                    load_balance_token=e.token,
                )
            )
    return lb.LoadBalanceResponse(server_list=lb.ServerList(servers=servers)).SerializeToString()


def initial_payload(report_interval_ms: int) -> bytes:
    interval = Duration()
    interval.FromMilliseconds(report_interval_ms)
    return lb.LoadBalanceResponse(
        initial_response=lb.InitialLoadBalanceResponse(client_stats_report_interval=interval)
    ).SerializeToString()


FALLBACK_PAYLOAD = lb.LoadBalanceResponse(
    fallback_response=lb.FallbackResponse()
).SerializeToString()


def pool_payload(
    snapshot: PoolSnapshot, epoch: str, subset: Collection[str] | None = None
) -> bytes | None:
    """The response to send for a pool version (to a client with `subset`,
    when given), or None when there is nothing to send (no serving backend:
    clients keep the list they have, since an empty list would fail every
    call)."""
    if snapshot.config.fallback:
        return FALLBACK_PAYLOAD
    entries = build_entries(snapshot, epoch, subset=subset)
    if not entries:
        return None
    return server_list_payload(entries)
