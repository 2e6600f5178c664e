"""Batch counters: how many batches ran and how big they were.

Every finished batch is recorded in exactly one place (``WorkerServer._record_batch``), on the event loop
thread, so a metrics exporter has a single hook. The per-model counters travel to gateways inside each
model's ``describe()`` map (key ``"stats"``), which is how tests outside the process see batch sizes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(slots=True)
class BatchStats:
    """Counters of executed batches. Only the event loop thread updates or reads them."""

    batches: int = 0
    requests: int = 0
    rows: int = 0
    max_batch_rows: int = 0
    histogram: dict[int, int] = field(default_factory=dict)
    """Batch rows -> number of batches of that many rows."""

    def record(self, rows: int, requests: int) -> None:
        """Count one executed batch of ``requests`` requests holding ``rows`` rows."""
        self.batches += 1
        self.requests += requests
        self.rows += rows
        self.max_batch_rows = max(self.max_batch_rows, rows)
        self.histogram[rows] = self.histogram.get(rows, 0) + 1

    def snapshot(self) -> dict[str, Any]:
        """The counters as a small map (the histogram stays here: it can grow to ``max_batch_size`` keys)."""
        return {
            "batches": self.batches,
            "requests": self.requests,
            "rows": self.rows,
            "max_batch_rows": self.max_batch_rows,
        }
