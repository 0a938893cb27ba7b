"""Load reports are checked before they count.

A stream's ClientStats reach the load report sink only if

- the stream's name matched an existing pool (`no_pool` otherwise: names of
  no pool create no Redis keys and no metric series);
- it came no sooner than the interval the balancer asked for allows
  (`too_fast`; limits.ReportPacer);
- every count is non-negative (`negative`) and at most what the stream
  could have made since its last report: MAX_CALLS_PER_SECOND times the
  seconds elapsed, counted from at least one second (`too_large`). With the
  report pacing, all of a stream's reports together claim at most about
  three million calls per second of its life: a thousand streams would
  take about a century to pass int64 in a pool's running total;
- drop counts name drop tokens this stream was sent (the pool's configured
  drops), and per-backend outcomes (ClientStatsExtension, field 1001) name
  backend tokens this stream was sent. Entries naming other tokens are
  removed (`unknown_drop_token`, `unknown_backend_token`), the rest counts;
- a backend's outcomes claim no more calls than the stream was plausibly
  handed for it: its share of the list's entries (the larger of the last
  two lists) times SHARE_SLACK, of the calls the report says finished, plus
  SHARE_FLOOR. Claims beyond are cut to that (`over_share`), so one stream
  cannot outweigh the pool's other reports on a backend by inflating what
  it says of that backend alone.

Each refusal is counted in lookaside_balancer_load_reports_refused_total.
"""

from __future__ import annotations

import math
from collections import Counter, OrderedDict
from collections.abc import Callable
from typing import Any

from google.protobuf.message import DecodeError
from google.protobuf.unknown_fields import UnknownFieldSet

from balancer_server import metrics
from balancer_server.limits import REPORT_BURST, ReportPacer
from lookaside_proto.lb.v1 import backend_stats_pb2
from lookaside_proto.lb.v1 import load_balancer_pb2 as lb

# A single client channel makes far fewer calls than this; a report that
# claims more was not made by a client.
MAX_CALLS_PER_SECOND = 1_000_000
# Elapsed time is counted from at least this (the first report has no
# previous one; C-core reports at least once a second).
MIN_ELAPSED_S = 1.0
MAX_ELAPSED_S = 3600.0
MAX_DROP_ENTRIES = 64
MAX_BACKEND_ENTRIES = 1000
# A client spreads calls over the backends it can reach, which may be fewer
# than the list holds (some still connecting): its share of one may reach
# a few times the list's share.
SHARE_SLACK = 3.0
SHARE_FLOOR = 10


class ListTokens:
    """The backend and drop tokens of a serialized server list, parsed once
    per payload (payloads are shared by every stream of a pool)."""

    __slots__ = ("backends", "drops", "shares")

    def __init__(self, payload: bytes) -> None:
        response = lb.LoadBalanceResponse.FromString(payload)
        servers = response.server_list.servers
        self.backends = frozenset(s.load_balance_token for s in servers if not s.drop)
        self.drops = frozenset(s.load_balance_token for s in servers if s.drop)
        entries = Counter(s.load_balance_token for s in servers if not s.drop)
        self.shares = {t: n / len(servers) for t, n in entries.items()}


EMPTY = ListTokens(b"")
_CACHE: OrderedDict[bytes, ListTokens] = OrderedDict()
# One entry per distinct list in use: a pool with subsetting has one per
# subset (up to its number of backends), not one per version.
_CACHE_SIZE = 4096


def tokens_of(payload: bytes | None) -> ListTokens:
    if not payload:
        return EMPTY
    found = _CACHE.get(payload)
    if found is None:
        found = _CACHE[payload] = ListTokens(payload)
        if len(_CACHE) > _CACHE_SIZE:
            _CACHE.popitem(last=False)
    return found


def _refuse(reason: str) -> None:
    metrics.REPORTS_REFUSED.labels(reason).inc()


COUNTERS = (
    "num_calls_started",
    "num_calls_finished",
    "num_calls_finished_with_client_failed_to_send",
    "num_calls_finished_known_received",
)


def _scaled(entry: Any, most: int) -> Any:
    """`entry` with its calls cut to `most`, each count in proportion."""
    ratio = most / entry.num_calls_finished
    return backend_stats_pb2.BackendCallStats(
        load_balance_token=entry.load_balance_token,
        num_calls_finished=most,
        num_calls_finished_known_received=round(entry.num_calls_finished_known_received * ratio),
        num_calls_finished_with_client_failed_to_send=round(
            entry.num_calls_finished_with_client_failed_to_send * ratio
        ),
        num_calls_finished_with_deadline_exceeded=round(
            entry.num_calls_finished_with_deadline_exceeded * ratio
        ),
    )


class StreamReports:
    """One stream's report checks. `current` and `previous` are the token
    sets of the last two lists written to it (a report may describe calls
    made on the list before the newest)."""

    __slots__ = ("pacer", "current", "previous", "opened")

    def __init__(self, clock: Callable[[], float] | None = None, burst: int = REPORT_BURST) -> None:
        self.pacer = ReportPacer(clock, burst) if clock else ReportPacer(burst=burst)
        self.opened = self.pacer.clock()
        self.current = EMPTY
        self.previous = EMPTY

    def sent(self, payload: bytes) -> None:
        tokens = tokens_of(payload)
        if tokens is not self.current:
            self.previous, self.current = self.current, tokens

    def _known(self, token: str, drop: bool) -> bool:
        if drop:
            return token in self.current.drops or token in self.previous.drops
        return token in self.current.backends or token in self.previous.backends

    def check(self, stats: lb.ClientStats, interval_ms: int) -> lb.ClientStats | None:
        """The report to count (possibly with entries removed), or None.
        On the path of every report: the plain case (counts, no drops, no
        extension) is a few comparisons."""
        pacer = self.pacer
        since = pacer.last if pacer.last is not None else self.opened
        if not pacer.admit(interval_ms):
            _refuse("too_fast")
            return None
        elapsed = (pacer.last or since) - since  # admit() set last to now
        elapsed = MIN_ELAPSED_S if elapsed < MIN_ELAPSED_S else min(elapsed, MAX_ELAPSED_S)
        bound = int(MAX_CALLS_PER_SECOND * elapsed)
        values = (
            stats.num_calls_started,
            stats.num_calls_finished,
            stats.num_calls_finished_with_client_failed_to_send,
            stats.num_calls_finished_known_received,
        )
        drops = stats.calls_finished_with_drop
        if min(values) < 0 or (drops and any(d.num_calls < 0 for d in drops)):
            _refuse("negative")
            return None
        if max(values) > bound or (
            drops and (sum(d.num_calls for d in drops) > bound or len(drops) > MAX_DROP_ENTRIES)
        ):
            _refuse("too_large")
            return None
        clean = stats
        if drops and any(not self._known(d.load_balance_token, True) for d in drops):
            _refuse("unknown_drop_token")
            clean = lb.ClientStats()
            clean.CopyFrom(stats)
            del clean.calls_finished_with_drop[:]
            clean.calls_finished_with_drop.extend(
                d for d in drops if self._known(d.load_balance_token, True)
            )
        if len(UnknownFieldSet(stats)):
            clean = self._clean_extension(clean, bound)
        return clean

    def _handed(self, token: str, finished: int) -> int:
        """The most calls of `finished` this stream plausibly sent to `token`."""
        share = max(self.current.shares.get(token, 0.0), self.previous.shares.get(token, 0.0))
        return math.ceil(finished * min(1.0, share * SHARE_SLACK)) + SHARE_FLOOR

    def _clean_extension(self, stats: lb.ClientStats, bound: int) -> lb.ClientStats:
        raw = stats.SerializeToString()
        try:
            ext = backend_stats_pb2.ClientStatsExtension.FromString(raw)
        except DecodeError:
            _refuse("malformed")
            ext = backend_stats_pb2.ClientStatsExtension()
        kept = []
        claimed: Counter[str] = Counter()  # per token, over the report's entries
        for entry in ext.calls_per_backend[:MAX_BACKEND_ENTRIES]:
            counts = (
                entry.num_calls_finished,
                entry.num_calls_finished_with_client_failed_to_send,
                entry.num_calls_finished_known_received,
                entry.num_calls_finished_with_deadline_exceeded,
            )
            if not self._known(entry.load_balance_token, False):
                _refuse("unknown_backend_token")
            elif min(counts) < 0 or max(counts) > bound:
                _refuse("too_large" if max(counts) > bound else "negative")
            else:
                token = entry.load_balance_token
                most = self._handed(token, stats.num_calls_finished) - claimed[token]
                if entry.num_calls_finished > most:
                    _refuse("over_share")
                    if most <= 0:
                        continue
                    entry = _scaled(entry, most)
                claimed[token] += entry.num_calls_finished
                kept.append(entry)
        base = lb.ClientStats()
        base.CopyFrom(stats)
        base.DiscardUnknownFields()
        if not kept:
            return base
        tail = backend_stats_pb2.ClientStatsExtension(calls_per_backend=kept)
        return lb.ClientStats.FromString(base.SerializeToString() + tail.SerializeToString())
