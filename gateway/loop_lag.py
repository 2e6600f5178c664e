"""How late the gateway's event loop runs: the wait a request that arrives now has before the gateway reads it.

When the gateway's own CPU is the bottleneck, requests do not queue anywhere the gateway can count: they wait in
the kernel's socket buffers until the loop next polls them, and every one polled in a round is handled before
the next poll. The delay a timer sees between when it was due and when it ran measures that wait directly.

One late timer is noise (a page fault, another tenant's burst); what reports overload is the least lateness over
a window, as CoDel judges a queue by its minimum sojourn time: a standing queue, not a burst.

An idle loop has no queue, so the sampler sleeps once a tick finds the loop on time and no request arrived since
the tick before; the next arrival (``note_arrival``) wakes it. Ticking through idle time cost the gateway ~2% of
a core doing nothing, and with one MiniLM request in flight at a time, six wake-ups of the loop per request.
"""

from __future__ import annotations

import asyncio

DEFAULT_TICK_S = 0.002
DEFAULT_WINDOW_S = 0.05


class LoopLag:
    """Samples the event loop's lateness every ``tick_s``; ``sustained_s`` is the least of it over a window."""

    def __init__(self, tick_s: float = DEFAULT_TICK_S, window_s: float = DEFAULT_WINDOW_S) -> None:
        self.tick_s = tick_s
        self.window_s = window_s
        self._last_window_min = 0.0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._handle: asyncio.TimerHandle | None = None
        self._due = 0.0
        self._window_end = 0.0
        self._window_min = float("inf")
        self._started = False
        self._arrived = False

    @property
    def sustained_s(self) -> float:
        """The least lateness over the last whole window and the one under way.

        The window under way counts too: once the loop has run one tick on time, the queue is gone, and a
        request must not be refused for a window that ended before it drained (e.g. a slow start-up).
        """
        return min(self._last_window_min, self._window_min)

    @property
    def sampling(self) -> bool:
        """Whether a tick is scheduled: started, and not asleep through an idle spell."""
        return self._handle is not None

    def start(self) -> None:
        """Start sampling on the running loop."""
        self._loop = asyncio.get_running_loop()
        self._started = True
        self._wake()

    def stop(self) -> None:
        """Stop sampling; ``sustained_s`` drops to 0 so nothing is refused on a stale figure."""
        self._started = False
        self._sleep()

    def note_arrival(self) -> None:
        """A request arrived: keep sampling, or start again if the sampler slept through an idle spell."""
        self._arrived = True
        if self._handle is None and self._started:
            self._wake()

    def _wake(self) -> None:
        assert self._loop is not None
        now = self._loop.time()
        self._window_end = now + self.window_s
        self._schedule(now)

    def _sleep(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
        self._last_window_min = 0.0
        self._window_min = float("inf")

    def _schedule(self, now: float) -> None:
        assert self._loop is not None
        self._due = now + self.tick_s
        self._handle = self._loop.call_at(self._due, self._tick)

    def _tick(self) -> None:
        assert self._loop is not None
        now = self._loop.time()
        lateness = max(0.0, now - self._due)
        if lateness < self.tick_s and not self._arrived:
            self._handle = None
            self._sleep()
            return
        self._arrived = False
        self._window_min = min(self._window_min, lateness)
        if now >= self._window_end:
            self._last_window_min = self._window_min
            self._window_min = float("inf")
            self._window_end = now + self.window_s
        self._schedule(now)
