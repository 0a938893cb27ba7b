"""The per-call pick and the counters that mirror ClientStats.

Both are shared by the sync and asyncio channels. A pick is an index
increment and a tuple lookup; the picker is swapped whole when the list or
a backend's readiness changes, so picks never lock.
"""

from __future__ import annotations

import itertools
import random
import threading
from collections import Counter
from dataclasses import dataclass
from typing import Any

import grpc

from client_lib._lb_proto import backend_stats_pb2, lb

DROP_DETAILS = "drop directed by grpclb balancer"


class FailedCall(grpc.RpcError, grpc.Call, grpc.Future):  # type: ignore[misc]
    """A call that failed before it was sent: a drop, no backend, a deadline
    that passed while the call waited for one.

    It is both the exception raised by blocking calls and the object
    returned by .future() and streaming calls (iterating it raises it), so
    it looks to the caller like any other failed gRPC call.
    """

    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(details)
        self._code = code
        self._details = details

    # grpc.Call / grpc.RpcError
    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return self._details

    def initial_metadata(self) -> tuple[()]:
        return ()

    def trailing_metadata(self) -> tuple[()]:
        return ()

    def is_active(self) -> bool:
        return False

    def time_remaining(self) -> None:
        return None

    def add_callback(self, callback: Any) -> bool:
        return False

    # grpc.Future
    def cancel(self) -> bool:
        return False

    def cancelled(self) -> bool:
        return False

    def running(self) -> bool:
        return False

    def done(self) -> bool:
        return True

    def result(self, timeout: float | None = None) -> Any:
        raise self

    def exception(self, timeout: float | None = None) -> FailedCall:
        return self

    def traceback(self, timeout: float | None = None) -> None:
        return None

    def add_done_callback(self, fn: Any) -> None:
        fn(self)

    # streaming responses
    def __iter__(self) -> FailedCall:
        return self

    def __next__(self) -> Any:
        raise self

    def __str__(self) -> str:
        return f"<FailedCall {self._code.name}: {self._details}>"


@dataclass(frozen=True, slots=True)
class Pick:
    """One list slot. `target` is the sub-channel (None for a drop);
    `token` the backend's lb-token, or the drop's reason."""

    target: Any
    metadata: tuple[tuple[str, str], ...]
    token: str = ""


class Picker:
    """C-core's grpclb picker over round_robin: drops are decided by a
    rotation over the whole list (drop entries included), and every other
    call goes round robin over the entries whose sub-channel is READY. The
    rotations start at random slots so that many clients do not all start
    on one backend. pick() returns None when no entry is READY."""

    __slots__ = ("picks", "ready", "_has_drops", "_next", "_n", "_next_ready", "_n_ready")

    def __init__(self, picks: list[Pick] | tuple[Pick, ...], ready: tuple[Pick, ...]) -> None:
        self.picks = tuple(picks)
        self.ready = ready
        self._n = len(self.picks)
        self._n_ready = len(ready)
        self._has_drops = any(p.target is None for p in self.picks)
        self._next = itertools.count(random.randrange(self._n) if self._n else 0)
        self._next_ready = itertools.count(random.randrange(self._n_ready) if ready else 0)

    def pick(self) -> Pick | None:
        if self._has_drops:
            p = self.picks[next(self._next) % self._n]
            if p.target is None:
                return p
        if not self._n_ready:
            return None
        return self.ready[next(self._next_ready) % self._n_ready]

    def __len__(self) -> int:
        return self._n

    def describe(self) -> list[tuple[str, str]]:
        """The list as (address, token); drops as ("", reason)."""
        return [(p.target.address if p.target else "", p.token) for p in self.picks]


# Codes that can come from the transport rather than from a server (grpc
# StatusCode members for grpc, their numbers for grpc.aio's raw status).
LOCAL_CODES = {
    grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.CANCELLED,
    grpc.StatusCode.DEADLINE_EXCEEDED,
    1,
    4,
    14,
}


class CallCounters:
    """ClientStats counters with C-core's meaning.

    started/finished count every call that picked a backend or a drop.
    known_received: the server is known to have received the call (a
    response, server metadata, or a status only a server sends).
    failed_to_send: UNAVAILABLE with nothing from the server.
    A drop counts as started and finished, and under its token.

    Finished calls are also counted per backend token (finished,
    failed_to_send, known_received, deadline_exceeded) and reported in the
    ClientStats extension that outlier detection reads.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.started = 0
        self.finished = 0
        self.failed_to_send = 0
        self.known_received = 0
        self.drops: Counter[str] = Counter()
        self.per_backend: dict[str, list[int]] = {}
        self._last_was_zero = False

    def call_started(self) -> None:
        with self._lock:
            self.started += 1

    def call_finished(
        self, known_received: bool, failed_to_send: bool, token: str, timed_out: bool = False
    ) -> None:
        with self._lock:
            self.finished += 1
            row = self.per_backend.get(token)
            if row is None:
                row = self.per_backend[token] = [0, 0, 0, 0]
            row[0] += 1
            if known_received:
                self.known_received += 1
                row[2] += 1
            if failed_to_send:
                self.failed_to_send += 1
                row[1] += 1
            if timed_out:
                row[3] += 1

    def call_dropped(self, token: str) -> None:
        with self._lock:
            self.started += 1
            self.finished += 1
            self.drops[token] += 1

    def call_not_sent(self) -> None:
        """A call that failed because no backend could take it (every one
        in TRANSIENT_FAILURE, or an empty list): started, finished, and
        failed to send, under no backend."""
        with self._lock:
            self.started += 1
        self.call_finished(False, True, "")

    def finish_with(self, code: Any, has_metadata: bool, token: str) -> None:
        """Records the end of a call to the backend with `token` from its
        status code and whether any metadata came back from the server."""
        if code is grpc.StatusCode.OK or code == 0:
            self.call_finished(True, False, token)
            return
        known = has_metadata or code not in LOCAL_CODES
        unavailable = code is grpc.StatusCode.UNAVAILABLE or code == 14
        timed_out = code is grpc.StatusCode.DEADLINE_EXCEEDED or code == 4
        self.call_finished(known, unavailable and not known, token, timed_out)

    def take_report(self, timestamp_ns: int) -> lb.ClientStats | None:
        """The deltas since the last report, or None when this report and the
        previous one are both all zero (C-core skips those). Per-backend
        counts ride along as the ClientStatsExtension (field 1001)."""
        with self._lock:
            stats = lb.ClientStats(
                num_calls_started=self.started,
                num_calls_finished=self.finished,
                num_calls_finished_with_client_failed_to_send=self.failed_to_send,
                num_calls_finished_known_received=self.known_received,
                calls_finished_with_drop=[
                    lb.ClientStatsPerToken(load_balance_token=t, num_calls=n)
                    for t, n in sorted(self.drops.items())
                ],
            )
            per_backend, self.per_backend = self.per_backend, {}
            zero = not (self.started or self.finished or self.drops)
            self.started = self.finished = self.failed_to_send = self.known_received = 0
            self.drops = Counter()
            if zero and self._last_was_zero:
                return None
            self._last_was_zero = zero
        stats.timestamp.FromNanoseconds(timestamp_ns)
        entries = [
            backend_stats_pb2.BackendCallStats(
                load_balance_token=token,
                num_calls_finished=row[0],
                num_calls_finished_with_client_failed_to_send=row[1],
                num_calls_finished_known_received=row[2],
                num_calls_finished_with_deadline_exceeded=row[3],
            )
            for token, row in sorted(per_backend.items())
            if token
        ]
        if entries:
            # Concatenated messages merge: the extension lands in the
            # ClientStats as a field that stock balancers skip.
            ext = backend_stats_pb2.ClientStatsExtension(calls_per_backend=entries)
            stats.MergeFromString(ext.SerializeToString())
        return stats


def never_sent(code: Any, details: str | None, has_metadata: bool) -> bool:
    """gRFC A6: the call failed before any byte of it reached a backend (the
    sub-channel could not connect), so it may be retried transparently. A
    reset after the request went out reads differently and is not."""
    if has_metadata or not (code is grpc.StatusCode.UNAVAILABLE or code == 14):
        return False
    return "failed to connect" in (details or "").lower()
