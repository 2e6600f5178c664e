"""Whether this gateway process's event loop is CPU-bound, and how fast it finishes the requests it admits.

When the loop is the bottleneck, requests read in one loop iteration are all admitted before their cost shows in
the loop's lag (``gateway/loop_lag.py``), and at twice the load the gateway can sustain, admitted requests spent
50-150 ms inside it against a 100 ms deadline. Little's law bounds that wait from what is known at admission:
``inflight`` requests finishing at ``finish_rate`` take about ``inflight / finish_rate`` to drain
(``Admission.refusal``).

Sampled by the requests themselves: each POST that reaches admission calls ``tick``, and once ``WINDOW_S`` has
passed the window closes with the loop thread's demand for a CPU and the rate admitted requests finished at.
Demand is the time the thread ran plus the time it waited runnable for a core (``demand_clock``, from Linux's
schedstat), over wall time: a loop starved of CPU by other processes is as much the bottleneck as a loop that
runs all the time, and with two gateway processes on two shared cores neither loop ran 85% of the time, so
neither refused, while admitted requests waited 100-135 ms at p50 against a 100 ms deadline. Only the loop
thread counts: ZeroMQ's I/O thread runs beside it and is not the loop's work.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

WINDOW_S = 0.1
_SCHEDSTAT = Path("/proc/thread-self/schedstat")
_NS_PER_S = 1e9
SATURATED_SHARE = 0.85
"""A loop thread busy for at least this share of a window is what the requests wait for."""


def schedstat_clock(path: Path = _SCHEDSTAT) -> Callable[[], float]:
    """A clock of the calling thread's run time plus its runqueue wait, read from ``path`` (Linux's schedstat);
    ``time.thread_time`` (run time alone) where that cannot be read."""

    def demand() -> float:
        run_ns, wait_ns, _ = path.read_bytes().split()
        return (int(run_ns) + int(wait_ns)) / _NS_PER_S

    try:
        demand()
    except (OSError, ValueError):
        return time.thread_time
    return demand


demand_clock = schedstat_clock()
"""Seconds the calling thread has run or waited runnable for a core; its CPU time where schedstat is missing."""


class Saturation:
    """``saturated`` and ``finish_rate`` (admitted requests finished per second) over the latest window."""

    def __init__(
        self, clock: Callable[[], float] = time.monotonic, cpu_clock: Callable[[], float] = demand_clock
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
