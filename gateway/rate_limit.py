"""Per-API-key rate limits: one token bucket per key, answered with 429 and ``Retry-After`` when empty.

A bucket holds at most ``burst`` tokens and refills at ``rate_per_s``; each request takes one. So a key may
send ``burst`` requests at once, then ``rate_per_s`` a second for as long as it likes. Pure: the clock is
injected (``time.monotonic`` in the gateway), so tests drive time.

The limit is per gateway process: with N gateway processes behind a load balancer a key gets up to N times its
rate. A limit shared across processes (Redis) is future work; the bucket's interface would not change.
Runs on the event loop thread only; no locking.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Hashable

Clock = Callable[[], float]


class TokenBucket:
    """``burst`` tokens, refilled continuously at ``rate_per_s``; starts full."""

    __slots__ = ("_clock", "_tokens", "_updated_at", "burst", "rate_per_s")

    def __init__(self, rate_per_s: float, burst: float, clock: Clock = time.monotonic) -> None:
        if rate_per_s <= 0 or burst < 1:
            raise ValueError(f"a token bucket needs rate_per_s > 0 and burst >= 1, got {rate_per_s}, {burst}")
        self.rate_per_s = rate_per_s
        self.burst = burst
        self._clock = clock
        self._tokens = float(burst)
        self._updated_at = clock()

    def _refill(self) -> None:
        now = self._clock()
        elapsed = max(0.0, now - self._updated_at)  # a clock that steps back must not drain the bucket
        self._tokens = min(self.burst, self._tokens + elapsed * self.rate_per_s)
        self._updated_at = now

    def try_take(self) -> float:
        """Take a token: 0.0 when one was there, else the seconds until one will be (nothing is taken)."""
        self._refill()
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return 0.0
        return (1.0 - self._tokens) / self.rate_per_s

    @property
    def tokens(self) -> float:
        """Tokens available now (for tests and metrics)."""
        self._refill()
        return self._tokens


def retry_after_s(wait_s: float) -> int:
    """The ``Retry-After`` value for a wait: whole seconds, rounded up, at least 1."""
    return max(1, math.ceil(wait_s))


class RateLimiter:
    """One ``TokenBucket`` per caller, made on the caller's first request.

    Callers are the configured API keys, a fixed set, so the table cannot grow without bound.
    """

    def __init__(self, clock: Clock = time.monotonic) -> None:
        self._clock = clock
        self._buckets: dict[Hashable, TokenBucket] = {}
        self.limited = 0
        """Requests refused so far (a counter for metrics)."""

    def check(self, caller: Hashable, rate_per_s: float, burst: float) -> float:
        """0.0 when ``caller`` may go on, else the seconds to wait; a rate of 0 means unlimited."""
        if rate_per_s <= 0:
            return 0.0
        bucket = self._buckets.get(caller)
        if bucket is None:
            bucket = self._buckets[caller] = TokenBucket(rate_per_s, burst, self._clock)
        wait_s = bucket.try_take()
        if wait_s:
            self.limited += 1
        return wait_s
