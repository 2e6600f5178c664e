"""When to hedge: send a second copy of a slow request to another worker ("The Tail at Scale", Dean & Barroso).

The policy is pure and clock-free; ``WorkerPool.infer`` runs the one small race it implies.

- Delay: a request that has not been answered after the hedge delay gets a second copy on another worker. The
  delay is fixed when configured, otherwise adaptive: the ``quantile`` (default p95) of that model's recent
  latencies, so by construction only the slowest ~5% are candidates, and never less than ``min_delay_s``.
- Budget: a token bucket caps hedges at ``budget_ratio`` of requests (each request adds ``budget_ratio`` tokens, a
  hedge spends one, the bucket holds at most ``burst``), so hedging cannot amplify an overload.
- Where: only to a worker that is idle enough (the caller checks its queue), so that under overload, when every
  worker is busy, hedging stops by itself.
"""

from __future__ import annotations

from collections import deque

import numpy as np

LATENCY_WINDOW = 1000
REFRESH_EVERY = 50
MIN_SAMPLES = 50
DEFAULT_BURST_TOKENS = 10.0


class LatencyTracker:
    """A model's recent latencies and a cached quantile of them."""

    def __init__(self, quantile: float, window: int = LATENCY_WINDOW) -> None:
        self._samples: deque[float] = deque(maxlen=window)
        self._quantile = quantile
        self._since_refresh = 0
        self.value_s: float | None = None

    def observe(self, latency_s: float) -> None:
        """Record one latency; the quantile is recomputed every REFRESH_EVERY samples (cheap on the hot path)."""
        self._samples.append(latency_s)
        self._since_refresh += 1
        if self._since_refresh >= REFRESH_EVERY and len(self._samples) >= MIN_SAMPLES:
            self._since_refresh = 0
            self.value_s = float(np.quantile(np.fromiter(self._samples, float), self._quantile))


class HedgePolicy:
    """Decides the hedge delay per model and holds the hedge budget."""

    def __init__(
        self,
        *,
        models: frozenset[str] | None,
        fixed_delay_s: float | None,
        quantile: float = 0.95,
        min_delay_s: float = 0.001,
        budget_ratio: float = 0.05,
        burst: float = DEFAULT_BURST_TOKENS,
    ) -> None:
        """``models``: the models to hedge (None: all); ``fixed_delay_s``: None for the adaptive delay."""
        self._models = models
        self._fixed_delay_s = fixed_delay_s
        self._quantile = quantile
        self._min_delay_s = min_delay_s
        self._budget_ratio = budget_ratio
        self._burst = burst
        self._tokens = burst
        self._trackers: dict[str, LatencyTracker] = {}
        self.requests = 0
        self.hedges = 0
        self.hedges_won = 0
        self.denied_by_budget = 0

    def enabled_for(self, model: str) -> bool:
        """Whether ``model`` is hedged at all."""
        return self._models is None or model in self._models

    def delay_s(self, model: str) -> float | None:
        """Seconds to wait before hedging ``model``; None while the adaptive delay has too few samples."""
        if self._fixed_delay_s is not None:
            return self._fixed_delay_s
        tracker = self._trackers.get(model)
        if tracker is None or tracker.value_s is None:
            return None
        return max(self._min_delay_s, tracker.value_s)

    def on_request(self) -> None:
        """A request started: it earns the bucket a fraction of a hedge."""
        self.requests += 1
        self._tokens = min(self._burst, self._tokens + self._budget_ratio)

    def observe(self, model: str, latency_s: float) -> None:
        """A first answer arrived ``latency_s`` after the request was first sent."""
        tracker = self._trackers.get(model)
        if tracker is None:
            tracker = self._trackers[model] = LatencyTracker(self._quantile)
        tracker.observe(latency_s)

    def try_spend(self) -> bool:
        """Take one hedge from the budget; False when the budget is spent."""
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            self.hedges += 1
            return True
        self.denied_by_budget += 1
        return False


def parse_models(value: str) -> frozenset[str] | None:
    """``*``: every model (None); empty: none; else a comma-separated list."""
    value = value.strip()
    if value == "*":
        return None
    return frozenset(part.strip() for part in value.split(",") if part.strip())
