"""Configured retries (gRFC A6), read from the service config that a stock
grpcio channel takes in its `grpc.service_config` option: each method's
`retryPolicy` (or `hedgingPolicy`: client_lib.hedging) and the channel's
`retryThrottling`. I/O-free: the sync and
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
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import grpc

from client_lib.hedging import HedgingPolicy
from client_lib.service_config import (
    ServiceConfigError,
    duration,
    max_attempts,
    name_key,
    pushback_seconds,
    status_code,
)

__all__ = ["Attempts", "RetryConfig", "RetryPolicy", "ServiceConfigError", "Throttle"]


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
        attempts = max_attempts(raw, where)
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
            max_attempts=attempts,
            initial_backoff=duration(raw.get("initialBackoff"), f"{where}.initialBackoff"),
            max_backoff=duration(raw.get("maxBackoff"), f"{where}.maxBackoff"),
            multiplier=float(multiplier),
            codes=frozenset(status_code(c, f"{where}.retryableStatusCodes") for c in codes),
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

    def allows(self) -> bool:
        """Whether a retry (or a hedged attempt) may start now."""
        with self._lock:
            return self.tokens > self.max_tokens / 2

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
        pushback = pushback_seconds(trailing_metadata)
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


@dataclass(frozen=True, slots=True)
class MethodPolicy:
    """What a method config says of attempts: a retry policy or a hedging
    policy (gRFC A6: never both)."""

    retry: RetryPolicy | None = None
    hedging: HedgingPolicy | None = None

    @classmethod
    def parse(cls, mc: dict[str, Any], where: str) -> MethodPolicy | None:
        """None for a method config with neither policy."""
        if "retryPolicy" in mc and "hedgingPolicy" in mc:
            raise ServiceConfigError(
                f"{where} has both retryPolicy and hedgingPolicy: gRFC A6 allows one of "
                "them per method config (drop one, or give the methods separate configs)"
            )
        if "retryPolicy" in mc:
            return cls(retry=RetryPolicy.parse(mc["retryPolicy"], f"{where}.retryPolicy"))
        if "hedgingPolicy" in mc:
            return cls(hedging=HedgingPolicy.parse(mc["hedgingPolicy"], f"{where}.hedgingPolicy"))
        return None


class RetryConfig:
    """The attempts part of a service config: a retry or hedging policy per
    method name, and the channel's retry throttle."""

    def __init__(
        self, methods: dict[str, MethodPolicy] | None = None, throttle: Throttle | None = None
    ) -> None:
        self.methods = methods or {}
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
        methods: dict[str, MethodPolicy] = {}
        method_configs = config.get("methodConfig", [])
        if not isinstance(method_configs, list):
            raise ServiceConfigError("methodConfig must be a list")
        for i, mc in enumerate(method_configs):
            if not isinstance(mc, dict):
                raise ServiceConfigError(f"methodConfig[{i}] must be an object")
            policy = MethodPolicy.parse(mc, f"methodConfig[{i}]")
            if policy is None:
                continue
            names = mc.get("name", [])
            if not isinstance(names, list):
                raise ServiceConfigError(f"methodConfig[{i}].name must be a list")
            for name in names:
                key = name_key(name, f"methodConfig[{i}].name")
                if key in methods:
                    raise ServiceConfigError(f"methodConfig: {key or 'the default'} is named twice")
                methods[key] = policy
        throttle = None
        if "retryThrottling" in config:
            throttle = Throttle.parse(config["retryThrottling"])
        return cls(methods, throttle)

    def _lookup(self, method: str) -> MethodPolicy | None:
        """The policies for a full method name ("/pkg.Service/Method"): the
        method's own, its service's, or the default."""
        if not self.methods:
            return None
        service, _, name = method.lstrip("/").partition("/")
        return (
            self.methods.get(f"{service}/{name}")
            or self.methods.get(f"{service}/")
            or self.methods.get("")
        )

    def policy(self, method: str) -> RetryPolicy | None:
        """The method's retry policy, if its method config has one."""
        found = self._lookup(method)
        return found.retry if found is not None else None

    def hedging(self, method: str) -> HedgingPolicy | None:
        """The method's hedging policy, if its method config has one."""
        found = self._lookup(method)
        return found.hedging if found is not None else None

    def attempts(self, policy: RetryPolicy | None) -> Attempts | None:
        return None if policy is None else Attempts(policy, self.throttle)


def subchannel_options(options: Sequence[tuple[str, Any]]) -> list[tuple[str, Any]]:
    """A backend sub-channel's options: without the service config, which
    this client applies itself (a sub-channel retrying on its own single
    backend, or trying grpclb against it, would only get in the way)."""
    return [o for o in options if o[0] != "grpc.service_config"]
