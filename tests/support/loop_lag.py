"""A loop-lag monitor that reports a set lag, as the real one would have measured it."""

from __future__ import annotations

from tandem.gateway.loop_lag import LoopLag


class FixedLag(LoopLag):
    """Reports ``lag_s`` as the sustained lag; never samples the loop."""

    def __init__(self, lag_s: float) -> None:
        super().__init__()
        self.lag_s = lag_s

    @property
    def sustained_s(self) -> float:
        return self.lag_s
