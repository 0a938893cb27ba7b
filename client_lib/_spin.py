"""Keeps a sync backend channel's completion thread running while the
channel is open.

grpcio's sync channel completes the calls that nobody blocks on (futures,
response streams) on a thread of its own: the channel starts it when the
first such call begins and the thread ends when the last one ends; the
caller that starts it waits until it runs. One channel per backend, as the
thin client keeps, runs dry far more often than one channel over every
backend does: with 64 futures in flight over 3 backends a channel per
backend started some 16-18 threads per 64 calls where one round_robin
channel started 1, and on a busy machine each start costs the caller
tens to hundreds of microseconds. client_lib.calls parks a call on a
backend's channel when a future or response stream goes to it while more
than one backend is READY (over one backend, measured, a parked call cost
more CPU per future than it saved).

pin() parks one call on the channel that is never sent: its only
operation is to receive a status, so the channel's client stack holds it
until a send that never comes, and nothing reaches the backend. grpcio
counts it as a call in flight, so the channel's thread stays (blocked,
not spinning). Closing the channel cancels the parked call like any call
in flight, and the thread ends with it.

This leans on grpcio's internals (grpc._channel, grpc._cython.cygrpc),
checked on first use: when they are not as expected, pin() does nothing
and the channel behaves as grpcio's own. At most PIN_LIMIT channels of a
process are pinned (one parked thread each); past that, a channel keeps
grpcio's own behaviour. LOOKASIDE_CLIENT_PARK=0 in the environment turns
it off for the process.
"""

from __future__ import annotations

import logging
import os
import threading
from typing import Any

log = logging.getLogger("lookaside.client")

PIN_LIMIT = 256

# What grpc._channel's managed-call factory is called with: the parked
# call's method (never sent), and flags, host, deadline (none), metadata,
# credentials, operation batches, event handler, tracing context and
# registered-method handle.
_METHOD = b"/lookaside.client.v1.Parked/Never"

_lock = threading.Lock()
_pinned = 0
# None: not tried yet; off when the environment says so.
_usable: bool | None = False if os.environ.get("LOOKASIDE_CLIENT_PARK", "1") == "0" else None


def _parked_call_ended(event: Any) -> bool:
    """The parked call's one operation completed (it was cancelled): tells
    grpcio's completion thread that this call is over."""
    return True


def pin(channel: Any) -> Any:
    """Parks a never-sent call on the sync grpc `channel`; returns it, or
    None when nothing was parked (grpcio's internals differ, or PIN_LIMIT
    channels are pinned already)."""
    global _pinned, _usable
    if _usable is False:
        return None
    with _lock:
        if _pinned >= PIN_LIMIT:
            return None
        try:
            from grpc import _channel as grpc_channel
            from grpc._cython import cygrpc

            create = grpc_channel._channel_managed_call_management(channel._call_state)
            parked = create(
                0,
                _METHOD,
                None,
                None,
                None,
                None,
                ((cygrpc.ReceiveStatusOnClientOperation(0),),),
                _parked_call_ended,
                None,
                None,
            )
        except Exception as exc:  # noqa: BLE001 - another grpcio: behave as grpcio does
            if _usable is None:
                log.debug("sync channels keep grpcio's own completion threads: %r", exc)
            _usable = False
            return None
        _usable = True
        _pinned += 1
        return parked


def unpin(parked: Any) -> None:
    """The channel of `parked` is about to close (which cancels the parked
    call): it no longer counts against PIN_LIMIT."""
    global _pinned
    if not parked:  # None or False: nothing parked
        return
    with _lock:
        _pinned -= 1
