"""Per-request deadlines.

A ``Deadline`` is created once when a request arrives and passed down: feature lookups, pre-processing and the
worker call all spend from the same budget. It uses ``time.monotonic`` so wall-clock jumps cannot stretch it.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from tandem.common.errors import BadRequest, DeadlineExceeded

TIMEOUT_HEADER = "x-request-timeout-ms"
_MS_PER_S = 1000.0


class Deadline:
    """The instant by which a request must be answered."""

    __slots__ = ("_clock", "budget_ms", "expires_at")

    def __init__(self, budget_ms: float, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self.budget_ms = budget_ms
        self.expires_at = clock() + budget_ms / _MS_PER_S

    def remaining_s(self) -> float:
        """Seconds left; negative once passed."""
        return self.expires_at - self._clock()

    def remaining_ms(self) -> float:
        """Milliseconds left; negative once passed."""
        return self.remaining_s() * _MS_PER_S

    @property
    def expired(self) -> bool:
        """True once the deadline has passed."""
        return self.remaining_s() <= 0

    def check(self, what: str) -> None:
        """Raise ``DeadlineExceeded`` naming the step that found the budget spent."""
        if self.expired:
            raise DeadlineExceeded(f"deadline of {self.budget_ms:g} ms exceeded before {what}")


def budget_from_header(value: str | bytes | None, *, default_ms: float, max_ms: float) -> float:
    """A request's budget in ms from its ``X-Request-Timeout-Ms`` header (or the default); BadRequest if invalid."""
    if value is None:
        return default_ms
    try:
        budget = float(value)
    except ValueError:
        raise BadRequest(f"header X-Request-Timeout-Ms must be a number of milliseconds, got {value!r}") from None
    if not 0 < budget <= max_ms:
        raise BadRequest(f"header X-Request-Timeout-Ms must be in (0, {max_ms:g}], got {value!r}")
    return budget


def deadline_from_header(value: str | None, *, default_ms: float, max_ms: float) -> Deadline:
    """Build a request's deadline from its ``X-Request-Timeout-Ms`` header (or the default)."""
    return Deadline(budget_from_header(value, default_ms=default_ms, max_ms=max_ms))
