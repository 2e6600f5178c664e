"""A per-model prediction of batch compute time, learned from the batches the worker runs.

Model: a batch of ``n`` rows computes in ``c(n) = a + b*n`` seconds. ``a`` and ``b`` are fitted by exponentially
weighted least squares over recent batches (``DECAY`` sets the memory, about 1/DECAY batches), so the fit follows
a model swap or a change of machine load. While the batches seen all had about the same size, the slope cannot be
fitted; the prediction is then the mean time, scaled up linearly for larger batches (conservative). Each sample
is capped at ``OUTLIER_FACTOR`` times the current prediction, so a rare stall does not make every later batch look
slow. No prediction (None) until ``MIN_BATCHES`` batches were seen: callers then do not shed or shrink.

Used by the batcher (never form a batch whose predicted time makes its tightest request miss its deadline) and
by admission (refuse at once a request that would wait past its deadline). Loop thread only.
"""

from __future__ import annotations

from collections.abc import Hashable
from dataclasses import dataclass

DECAY = 0.05
MIN_BATCHES = 5
OUTLIER_FACTOR = 4.0
_MIN_ROW_VARIANCE = 0.25


@dataclass(slots=True)
class _Fit:
    weight: float = 0.0
    rows: float = 0.0
    secs: float = 0.0
    rows_sq: float = 0.0
    rows_secs: float = 0.0
    batches: int = 0

    def add(self, rows: float, secs: float) -> None:
        keep = 1.0 - DECAY
        self.weight = keep * self.weight + 1.0
        self.rows = keep * self.rows + rows
        self.secs = keep * self.secs + secs
        self.rows_sq = keep * self.rows_sq + rows * rows
        self.rows_secs = keep * self.rows_secs + rows * secs
        self.batches += 1

    def predict(self, rows: int) -> float:
        mean_rows = self.rows / self.weight
        mean_secs = self.secs / self.weight
        variance = self.rows_sq / self.weight - mean_rows * mean_rows
        if variance > _MIN_ROW_VARIANCE:
            slope = (self.rows_secs / self.weight - mean_rows * mean_secs) / variance
            if slope >= 0:
                intercept = mean_secs - slope * mean_rows
                return max(intercept + slope * rows, 0.0)
        return mean_secs * max(1.0, rows / max(mean_rows, 1.0))


class BatchLatencyModel:
    """``c(n)`` per model key, as described above."""

    def __init__(self) -> None:
        self._fits: dict[Hashable, _Fit] = {}

    def observe(self, key: Hashable, rows: int, seconds: float) -> None:
        """Record one batch of ``rows`` rows that computed in ``seconds``."""
        fit = self._fits.get(key)
        if fit is None:
            fit = self._fits[key] = _Fit()
        if fit.batches >= MIN_BATCHES:
            seconds = min(seconds, OUTLIER_FACTOR * fit.predict(rows))
        fit.add(float(rows), seconds)

    def predict(self, key: Hashable, rows: int) -> float | None:
        """Predicted seconds for a batch of ``rows`` rows of ``key``; None while too few batches were seen."""
        fit = self._fits.get(key)
        if fit is None or fit.batches < MIN_BATCHES:
            return None
        return fit.predict(rows)

    def forget(self, key: Hashable) -> None:
        """Drop what was learned for ``key`` (its model was retired)."""
        self._fits.pop(key, None)
