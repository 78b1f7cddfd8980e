"""Token buckets for per-connection limits (the clock is passed in, for tests)."""

from __future__ import annotations

import time
from collections.abc import Callable


class TokenBucket:
    """`rate` tokens per second, holding at most `burst`."""

    def __init__(
        self, rate: float, burst: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.rate = rate
        self.burst = burst
        self._clock = clock
        self._tokens = burst
        self._updated = clock()

    def _refill(self) -> None:
        now = self._clock()
        tokens = self._tokens + (now - self._updated) * self.rate
        self._tokens = tokens if tokens < self.burst else self.burst  # not min(): every frame
        self._updated = now

    def take(self, amount: float = 1.0) -> float:
        """Take `amount` tokens (the balance may go negative); returns the seconds to wait
        before the balance is back to zero, 0 if there was enough."""
        self._refill()
        self._tokens -= amount
        return 0.0 if self._tokens >= 0 else -self._tokens / self.rate

    def try_take(self, amount: float = 1.0) -> bool:
        """Take `amount` tokens only if there are enough."""
        self._refill()
        if self._tokens < amount:
            return False
        self._tokens -= amount
        return True
