"""The registry's one error hierarchy.

Callers catch these, never a Redis exception: every store method turns a
Redis or connection failure into `Unavailable`.

    RegistryFailure          anything the registry refuses or cannot do
      InvalidInput           an input was refused (also ValueError)
      NotFound               a pool, backend or lease does not exist (also LookupError)
        LeaseRefused         the call did not carry the backend's current lease id
      NotOwner               a live lease belongs to another registrant
      Conflict               valid, but clashes with the current state
        VersionConflict      a compare-and-set lost to a concurrent change
        TransitionRefused    the state machine does not allow the change
          RefusedByHold      an operator's hold or a static backend outranks the caller
      Unavailable            Redis (or the network to it) failed
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, ParamSpec, TypeVar

import redis.exceptions

P = ParamSpec("P")
T = TypeVar("T")


class RegistryFailure(Exception):
    """Base of every registry error; the message is meant for the caller."""


class InvalidInput(RegistryFailure, ValueError):
    """An input was refused; the message says what was wrong and what is allowed."""


class NotFound(RegistryFailure, LookupError):
    """A pool, backend or lease does not exist (any more)."""


class LeaseRefused(NotFound):
    """Heartbeat, Drain or Deregister without the lease id Register returned."""


class NotOwner(RegistryFailure):
    """A self-registration call (Register of a leased address, Heartbeat,
    Drain, Deregister) by a principal other than the one that holds the
    backend's live lease."""


class Conflict(RegistryFailure):
    """The request is valid but clashes with the registry's current state."""


class VersionConflict(Conflict):
    """A compare-and-set on a pool's settings lost to a concurrent change."""

    def __init__(self, message: str, current_version: int) -> None:
        super().__init__(message)
        self.current_version = current_version


class PoolFull(Conflict):
    """A registration of a new backend into a pool that holds the most the
    caller may add to (checked in the same script as the write)."""

    def __init__(self, message: str, backends: int) -> None:
        super().__init__(message)
        self.backends = backends


class TooManyPools(Conflict):
    """A pool that would be created past the limit on pools (counted in the
    same atomic step that reserves the new name in the pools index)."""

    def __init__(self, message: str, pools: int) -> None:
        super().__init__(message)
        self.pools = pools


class TransitionRefused(Conflict):
    """The backend's state does not allow the change."""

    def __init__(self, message: str, current: str) -> None:
        super().__init__(message)
        self.current = current


class RefusedByHold(TransitionRefused):
    """An operator's hold, or a static registration, outranks the caller."""


class Unavailable(RegistryFailure):
    """Redis did not answer or failed; retry later."""


def guarded(fn: Callable[P, Awaitable[T]]) -> Callable[P, Coroutine[Any, Any, T]]:
    """Turns Redis and connection failures of a store method into Unavailable."""

    @functools.wraps(fn)
    async def wrapper(*args: P.args, **kwargs: P.kwargs) -> T:
        try:
            return await fn(*args, **kwargs)
        except (redis.exceptions.RedisError, OSError) as exc:
            raise Unavailable(f"Redis failed ({type(exc).__name__}: {exc})") from exc

    return wrapper
