"""Configured retries (gRFC A6), read from the service config that a stock
grpcio channel takes in its `grpc.service_config` option: each method's
`retryPolicy` and the channel's `retryThrottling`. I/O-free: the sync and
asyncio calls ask it whether and when a failed attempt goes again, and do
the waiting and the new pick themselves.

    options=[("grpc.service_config", json.dumps({
        "methodConfig": [{
            "name": [{"service": "routeguide.RouteGuide", "method": "GetFeature"}],
            "retryPolicy": {
                "maxAttempts": 3, "initialBackoff": "0.01s", "maxBackoff": "0.1s",
                "backoffMultiplier": 2, "retryableStatusCodes": ["UNAVAILABLE"],
            },
        }],
    }))]

Only the user knows which methods are safe to run twice, so nothing is
retried this way unless configured (transparent retries of calls that
never left the process need no configuration). As in gRPC: at most 5
attempts, each one a new pick, the backoff random in [0, min(initial *
multiplier^(n-1), max)), a server's `grpc-retry-pushback-ms` obeyed (a
negative or malformed one stops the retries), all attempts within the
call's one deadline, and `"grpc.enable_retries": 0` turns it off. The
thin client retries unary-unary calls (blocking sync calls and every
asyncio call); other call kinds would need their requests buffered. Unlike
C-core it does not send grpc-previous-rpc-attempts: grpc drops "grpc-"
headers given as call metadata.
"""

from __future__ import annotations

import json
import random
import re
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import grpc

__all__ = ["Attempts", "RetryConfig", "RetryPolicy", "Throttle"]

MAX_ATTEMPTS = 5  # gRFC A6: larger values are treated as 5
PUSHBACK = "grpc-retry-pushback-ms"

_DURATION = re.compile(r"^(\d{1,9})(?:\.(\d{1,9}))?s$")
_CODES = {c.name: c for c in grpc.StatusCode}
_CODES_BY_NUMBER = {c.value[0]: c for c in grpc.StatusCode}


class ServiceConfigError(ValueError):
    """The `grpc.service_config` option is not a valid service config."""


def _duration(value: Any, where: str) -> float:
    """A google.protobuf.Duration in its JSON form ("0.1s"), > 0."""
    m = _DURATION.match(value) if isinstance(value, str) else None
    if m is None:
        raise ServiceConfigError(f'{where} must be a duration like "0.1s", not {value!r}')
    seconds = int(m.group(1)) + (int(m.group(2).ljust(9, "0")) / 1e9 if m.group(2) else 0.0)
    if seconds <= 0:
        raise ServiceConfigError(f"{where} must be above 0s")
    return seconds


def _status(value: Any, where: str) -> grpc.StatusCode:
    code = None
    if isinstance(value, str):
        code = _CODES.get(value.upper())
    elif isinstance(value, int) and not isinstance(value, bool):
        code = _CODES_BY_NUMBER.get(value)
    if code is None or code is grpc.StatusCode.OK:
        raise ServiceConfigError(f"{where}: {value!r} is not a status code that can be retried")
    return code


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    max_attempts: int
    initial_backoff: float
    max_backoff: float
    multiplier: float
    codes: frozenset[grpc.StatusCode]

    @classmethod
    def parse(cls, raw: Any, where: str) -> RetryPolicy:
        if not isinstance(raw, dict):
            raise ServiceConfigError(f"{where} must be an object")
        attempts = raw.get("maxAttempts")
        if not isinstance(attempts, int) or isinstance(attempts, bool) or attempts < 2:
            raise ServiceConfigError(f"{where}.maxAttempts must be an integer of at least 2")
        multiplier = raw.get("backoffMultiplier")
        if (
            not isinstance(multiplier, int | float)
            or isinstance(multiplier, bool)
            or not multiplier > 0
        ):
            raise ServiceConfigError(f"{where}.backoffMultiplier must be a number above 0")
        codes = raw.get("retryableStatusCodes")
        if not isinstance(codes, list) or not codes:
            raise ServiceConfigError(f"{where}.retryableStatusCodes must be a non-empty list")
        return cls(
            max_attempts=min(attempts, MAX_ATTEMPTS),
            initial_backoff=_duration(raw.get("initialBackoff"), f"{where}.initialBackoff"),
            max_backoff=_duration(raw.get("maxBackoff"), f"{where}.maxBackoff"),
            multiplier=float(multiplier),
            codes=frozenset(_status(c, f"{where}.retryableStatusCodes") for c in codes),
        )

    def backoff(self, retry: int) -> float:
        """The wait before retry number `retry` (1 for the first)."""
        cap = min(self.initial_backoff * self.multiplier ** (retry - 1), self.max_backoff)
        return random.uniform(0, cap)


class Throttle:
    """gRFC A6 retry throttling, one per channel: a retryable failure takes
    a token, a success gives back token_ratio; retries stop while half the
    tokens or fewer are left."""

    def __init__(self, max_tokens: int, token_ratio: float) -> None:
        self.max_tokens = float(max_tokens)
        self.token_ratio = token_ratio
        self.tokens = float(max_tokens)
        self._lock = threading.Lock()

    def failure(self) -> bool:
        """Records a retryable failure; True if a retry is still allowed."""
        with self._lock:
            self.tokens = max(self.tokens - 1, 0.0)
            return self.tokens > self.max_tokens / 2

    def success(self) -> None:
        with self._lock:
            self.tokens = min(self.tokens + self.token_ratio, self.max_tokens)

    @classmethod
    def parse(cls, raw: Any) -> Throttle:
        if not isinstance(raw, dict):
            raise ServiceConfigError("retryThrottling must be an object")
        tokens, ratio = raw.get("maxTokens"), raw.get("tokenRatio")
        if not isinstance(tokens, int) or isinstance(tokens, bool) or not 0 < tokens <= 1000:
            raise ServiceConfigError("retryThrottling.maxTokens must be an integer in 1..1000")
        if not isinstance(ratio, int | float) or isinstance(ratio, bool) or not ratio > 0:
            raise ServiceConfigError("retryThrottling.tokenRatio must be a number above 0")
        return cls(tokens, round(float(ratio), 3))


class Attempts:
    """One call's configured retries: made once the first attempt starts."""

    __slots__ = ("policy", "throttle", "made", "_retry")

    def __init__(self, policy: RetryPolicy, throttle: Throttle | None) -> None:
        self.policy = policy
        self.throttle = throttle
        self.made = 1
        self._retry = 0  # the backoff step; a pushback starts it over

    def succeeded(self) -> None:
        if self.throttle is not None:
            self.throttle.success()

    def retry_after(
        self, code: Any, trailing_metadata: Iterable[Any] | None, time_left: float | None = None
    ) -> float | None:
        """After a failed attempt: seconds to wait before the next one, or
        None when the call ends with this failure (also when the wait would
        not end before the call's deadline, `time_left` seconds away)."""
        if code not in self.policy.codes:
            return None
        pushback = _pushback(trailing_metadata)
        if self.throttle is not None and not self.throttle.failure():
            return None
        if pushback is not None and pushback < 0:
            return None  # the server said not to retry
        if self.made >= self.policy.max_attempts:
            return None
        delay = pushback if pushback is not None else self.policy.backoff(self._retry + 1)
        if time_left is not None and delay >= time_left:
            return None
        self.made += 1
        self._retry = 0 if pushback is not None else self._retry + 1
        return delay


def _pushback(trailing_metadata: Iterable[Any] | None) -> float | None:
    """The server's grpc-retry-pushback-ms in seconds; -1 when present but
    not a non-negative integer (gRPC then does not retry); None if absent."""
    for key, value in trailing_metadata or ():
        if key == PUSHBACK:
            text = value.decode("ascii", "replace") if isinstance(value, bytes) else str(value)
            return int(text) / 1000 if text.isdigit() and len(text) < 10 else -1.0
    return None


class RetryConfig:
    """The retry part of a service config: a policy per method name."""

    def __init__(
        self, policies: dict[str, RetryPolicy] | None = None, throttle: Throttle | None = None
    ) -> None:
        self.policies = policies or {}
        self.throttle = throttle

    @classmethod
    def from_options(cls, options: Sequence[tuple[str, Any]]) -> RetryConfig:
        """From a channel's options; raises ServiceConfigError."""
        opts = dict(options)
        raw = opts.get("grpc.service_config")
        if raw is None or opts.get("grpc.enable_retries", 1) in (0, False):
            return cls()
        try:
            config = json.loads(raw)
        except (TypeError, ValueError) as exc:
            raise ServiceConfigError(f"grpc.service_config is not JSON: {exc}") from None
        if not isinstance(config, dict):
            raise ServiceConfigError("grpc.service_config must be a JSON object")
        policies: dict[str, RetryPolicy] = {}
        method_configs = config.get("methodConfig", [])
        if not isinstance(method_configs, list):
            raise ServiceConfigError("methodConfig must be a list")
        for i, mc in enumerate(method_configs):
            if not isinstance(mc, dict):
                raise ServiceConfigError(f"methodConfig[{i}] must be an object")
            if "retryPolicy" not in mc:
                continue
            policy = RetryPolicy.parse(mc["retryPolicy"], f"methodConfig[{i}].retryPolicy")
            names = mc.get("name", [])
            if not isinstance(names, list):
                raise ServiceConfigError(f"methodConfig[{i}].name must be a list")
            for name in names:
                key = _name_key(name, f"methodConfig[{i}].name")
                if key in policies:
                    raise ServiceConfigError(f"methodConfig: {key or 'the default'} is named twice")
                policies[key] = policy
        throttle = None
        if "retryThrottling" in config:
            throttle = Throttle.parse(config["retryThrottling"])
        return cls(policies, throttle)

    def policy(self, method: str) -> RetryPolicy | None:
        """The policy for a full method name ("/pkg.Service/Method"): the
        method's own, its service's, or the default."""
        if not self.policies:
            return None
        service, _, name = method.lstrip("/").partition("/")
        return (
            self.policies.get(f"{service}/{name}")
            or self.policies.get(f"{service}/")
            or self.policies.get("")
        )

    def attempts(self, policy: RetryPolicy | None) -> Attempts | None:
        return None if policy is None else Attempts(policy, self.throttle)


def _name_key(name: Any, where: str) -> str:
    """ "service/method", "service/" for a whole service, "" for the default."""
    if not isinstance(name, dict):
        raise ServiceConfigError(f"{where} entries must be objects")
    service, method = name.get("service", ""), name.get("method", "")
    if not isinstance(service, str) or not isinstance(method, str):
        raise ServiceConfigError(f"{where}: service and method must be strings")
    if method and not service:
        raise ServiceConfigError(f"{where}: a method needs its service")
    return f"{service}/{method}" if service else ""


def subchannel_options(options: Sequence[tuple[str, Any]]) -> list[tuple[str, Any]]:
    """A backend sub-channel's options: without the service config, which
    this client applies itself (a sub-channel retrying on its own single
    backend, or trying grpclb against it, would only get in the way)."""
    return [o for o in options if o[0] != "grpc.service_config"]
