"""The pieces of a gRPC service config (the `grpc.service_config` channel
option) that the retry and hedging policies share: durations, status
codes, method names and the server's retry pushback, read as gRPC reads
them. A bad value raises ServiceConfigError naming the field."""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

import grpc

__all__ = ["ServiceConfigError", "duration", "name_key", "pushback_seconds", "status_code"]

MAX_ATTEMPTS = 5  # gRFC A6: larger values are treated as 5
PUSHBACK = "grpc-retry-pushback-ms"

_DURATION = re.compile(r"^(\d{1,9})(?:\.(\d{1,9}))?s$")
_CODES = {c.name: c for c in grpc.StatusCode}
_CODES_BY_NUMBER = {c.value[0]: c for c in grpc.StatusCode}


class ServiceConfigError(ValueError):
    """The `grpc.service_config` option is not a valid service config."""


def duration(value: Any, where: str, zero: bool = False) -> float:
    """A google.protobuf.Duration in its JSON form ("0.1s"): above 0, or
    0 too when `zero`."""
    m = _DURATION.match(value) if isinstance(value, str) else None
    if m is None:
        raise ServiceConfigError(f'{where} must be a duration like "0.1s", not {value!r}')
    seconds = int(m.group(1)) + (int(m.group(2).ljust(9, "0")) / 1e9 if m.group(2) else 0.0)
    if seconds <= 0 and not zero:
        raise ServiceConfigError(f"{where} must be above 0s")
    return seconds


def status_code(value: Any, where: str) -> grpc.StatusCode:
    """A status code by name (any case) or number; OK is refused."""
    code = None
    if isinstance(value, str):
        code = _CODES.get(value.upper())
    elif isinstance(value, int) and not isinstance(value, bool):
        code = _CODES_BY_NUMBER.get(value)
    if code is None or code is grpc.StatusCode.OK:
        raise ServiceConfigError(f"{where}: {value!r} is not a status code other than OK")
    return code


def max_attempts(raw: dict[str, Any], where: str) -> int:
    attempts = raw.get("maxAttempts")
    if not isinstance(attempts, int) or isinstance(attempts, bool) or attempts < 2:
        raise ServiceConfigError(f"{where}.maxAttempts must be an integer of at least 2")
    return min(attempts, MAX_ATTEMPTS)


def name_key(name: Any, where: str) -> str:
    """ "service/method", "service/" for a whole service, "" for the default."""
    if not isinstance(name, dict):
        raise ServiceConfigError(f"{where} entries must be objects")
    service, method = name.get("service", ""), name.get("method", "")
    if not isinstance(service, str) or not isinstance(method, str):
        raise ServiceConfigError(f"{where}: service and method must be strings")
    if method and not service:
        raise ServiceConfigError(f"{where}: a method needs its service")
    return f"{service}/{method}" if service else ""


def pushback_seconds(trailing_metadata: Iterable[Any] | None) -> float | None:
    """The server's grpc-retry-pushback-ms in seconds; -1 when present but
    not a non-negative integer (gRPC then does not go on); None if absent."""
    for key, value in trailing_metadata or ():
        if key == PUSHBACK:
            text = value.decode("ascii", "replace") if isinstance(value, bytes) else str(value)
            return int(text) / 1000 if text.isdigit() and len(text) < 10 else -1.0
    return None
