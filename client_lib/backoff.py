"""Reconnect backoff, as C-core's grpclb uses for its balancer stream."""

from __future__ import annotations

import random
from dataclasses import dataclass


@dataclass
class Backoff:
    initial: float = 1.0
    multiplier: float = 1.6
    jitter: float = 0.2
    maximum: float = 120.0
    _current: float = 0.0

    def next(self) -> float:
        self._current = (
            self.initial
            if not self._current
            else min(self._current * self.multiplier, self.maximum)
        )
        return self._current * (1 + random.uniform(-self.jitter, self.jitter))

    def reset(self) -> None:
        self._current = 0.0
