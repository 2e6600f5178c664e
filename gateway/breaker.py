"""A circuit breaker: stop calling a dependency that keeps failing, and probe it now and then.

States::

    closed --(failure_threshold failures in a row)--> open --(open_s passed)--> one probe allowed
      ^                                                 ^                              |
      +------------------ probe succeeds ---------------+----- probe fails ------------+

While open, ``allow()`` answers False at once, so a dead Redis costs nothing per request instead of a full
timeout. After ``open_s`` one caller is let through as a probe and the window re-arms at the same instant, so
under load exactly one request per ``open_s`` pays for probing; if that probe is cancelled and never reports,
the next window lets another through. Any success closes the breaker.

Pure and clock-injected (``time.monotonic`` by default) so tests drive time. Not thread-safe: the gateway's
event loop thread owns it.
"""

from __future__ import annotations

import time
from collections.abc import Callable

CLOSED = "closed"
OPEN = "open"


class CircuitBreaker:
    """Counts consecutive failures; past ``failure_threshold`` it refuses calls for ``open_s`` seconds."""

    __slots__ = ("_clock", "_failures", "_open_until", "failure_threshold", "open_s", "opened")

    def __init__(self, failure_threshold: int, open_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        if failure_threshold < 1 or open_s <= 0:
            raise ValueError(f"need failure_threshold >= 1 and open_s > 0, got {failure_threshold}, {open_s}")
        self.failure_threshold = failure_threshold
        self.open_s = open_s
        self._clock = clock
        self._failures = 0
        self._open_until: float | None = None
        self.opened = 0  # times the breaker went from closed to open (a counter for metrics)

    @property
    def state(self) -> str:
        """``closed`` or ``open`` (open includes the moment a probe is allowed)."""
        return CLOSED if self._open_until is None else OPEN

    def allow(self) -> bool:
        """True when the caller may call the dependency now (always when closed; one probe per window when open)."""
        if self._open_until is None:
            return True
        now = self._clock()
        if now < self._open_until:
            return False
        self._open_until = now + self.open_s  # this caller is the probe; the others wait for its verdict
        return True

    def record_success(self) -> None:
        """The call succeeded: close the breaker."""
        self._failures = 0
        self._open_until = None

    def record_failure(self) -> None:
        """The call failed or timed out: open the breaker once failures reach the threshold."""
        self._failures += 1
        if self._open_until is not None:
            self._open_until = self._clock() + self.open_s  # a failed probe re-arms a full window
        elif self._failures >= self.failure_threshold:
            self._open_until = self._clock() + self.open_s
            self.opened += 1
