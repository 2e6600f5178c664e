"""Whether this gateway process's event loop is CPU-bound, and how fast it finishes the requests it admits.

When the loop is the bottleneck, requests read in one loop iteration are all admitted before their cost shows in
the loop's lag (``gateway/loop_lag.py``), and at twice the load the gateway can sustain, admitted requests spent
50-150 ms inside it against a 100 ms deadline. Little's law bounds that wait from what is known at admission:
``inflight`` requests finishing at ``finish_rate`` take about ``inflight / finish_rate`` to drain
(``Admission.refusal``).

Sampled by the requests themselves: each POST that reaches admission calls ``tick``, and once ``WINDOW_S`` has
passed the window closes with the loop thread's CPU use (CPU seconds over wall seconds, ``time.thread_time``:
ZeroMQ's I/O thread runs beside it and is not the loop's work) and the rate admitted requests finished at.
"""

from __future__ import annotations

import time
from collections.abc import Callable

WINDOW_S = 0.1
SATURATED_SHARE = 0.85
"""A loop thread busy for at least this share of a window is what the requests wait for."""


class Saturation:
    """``saturated`` and ``finish_rate`` (admitted requests finished per second) over the latest window."""

    def __init__(
        self, clock: Callable[[], float] = time.monotonic, cpu_clock: Callable[[], float] = time.thread_time
    ) -> None:
        self.saturated = False
        self.finish_rate = 0.0
        self._clock = clock
        self._cpu_clock = cpu_clock
        self._finished = 0
        # The first window opens at the first tick: the loop's thread may not be the one that builds this.
        self._started: float | None = None
        self._cpu_started = 0.0

    def finished(self) -> None:
        """One admitted request finished."""
        self._finished += 1

    def tick(self) -> None:
        """A request arrived: close the window if it is over. Call from the event loop's thread."""
        now = self._clock()
        if self._started is None:
            self._started, self._cpu_started = now, self._cpu_clock()
            return
        elapsed = now - self._started
        if elapsed < WINDOW_S:
            return
        cpu = self._cpu_clock()
        self.saturated = (cpu - self._cpu_started) / elapsed >= SATURATED_SHARE
        self.finish_rate = self._finished / elapsed
        self._finished = 0
        self._started = now
        self._cpu_started = cpu
