"""When to hedge: send a second copy of a slow request to another worker ("The Tail at Scale", Dean & Barroso).

The policy is pure and clock-free; ``WorkerPool.infer`` runs the one small race it implies.

- Delay: a request that has not been answered after the hedge delay gets a second copy on another worker. The
  delay is fixed when configured, otherwise adaptive: the ``quantile`` (default p95) of that model's recent
  latencies, so by construction only the slowest ~5% are candidates, and never less than ``min_delay_s``.
- Budget: a token bucket caps hedges at ``budget_ratio`` of requests (each request adds ``budget_ratio`` tokens, a
  hedge spends one, the bucket holds at most ``burst``), so hedging cannot amplify an overload. Part of the bucket
  (``reserve``) is kept for requests whose worker has stopped answering anything (a stall, see
  ``WorkerPool``): a p95 delay makes ~5% of requests candidates by construction, and on a noisy host those
  ordinary slow requests would otherwise drain the budget just before a stall, when hedging pays most.
- Payoff: a hedge that loses is pure extra load. Where a model's latency is steady (a worker that is answering
  will answer this request soon too), hedges of requests on a worker that is not stalled keep losing; once their
  recent win rate falls below ``min_payoff``, only one such candidate in ``probe_every`` is hedged, enough to
  notice when they start paying off again. Hedges from a stalled worker are never throttled this way.
- Where: only to a worker that is idle enough (the caller checks its queue), so that under overload, when every
  worker is busy, hedging stops by itself.
"""

from __future__ import annotations

import numpy as np

LATENCY_WINDOW = 1000
REFRESH_EVERY = 50
MIN_SAMPLES = 50
DEFAULT_BURST_TOKENS = 20.0
DEFAULT_RESERVE_TOKENS = 10.0
PAYOFF_ALPHA = 0.05
"""Weight of one outcome in the moving win rate of ordinary hedges (about the last 20 count)."""
DEFAULT_MIN_PAYOFF = 0.3
DEFAULT_PROBE_EVERY = 10


class LatencyTracker:
    """A model's recent latencies and a cached quantile of them."""

    def __init__(self, quantile: float, window: int = LATENCY_WINDOW) -> None:
        # A ring of the latest ``window`` latencies: a partition of it costs ~2 us, where converting a deque of
        # floats to an array and taking ``np.quantile`` took ~40 us, about 1% of the gateway's CPU at saturation.
        self._samples = np.empty(window)
        self._count = 0
        self._quantile = quantile
        self._since_refresh = 0
        self.value_s: float | None = None

    def observe(self, latency_s: float) -> None:
        """Record one latency; the quantile is recomputed every REFRESH_EVERY samples (cheap on the hot path)."""
        samples = self._samples
        samples[self._count % len(samples)] = latency_s
        self._count += 1
        self._since_refresh += 1
        if self._since_refresh >= REFRESH_EVERY and self._count >= MIN_SAMPLES:
            self._since_refresh = 0
            self.value_s = _quantile(samples[: self._count], self._quantile)


def _quantile(values: np.ndarray, q: float) -> float:
    """``np.quantile(values, q)`` (linear interpolation) from a partial sort around the two order statistics."""
    position = q * (len(values) - 1)
    low = int(position)
    high = min(low + 1, len(values) - 1)
    ranked = np.partition(values, (low, high))
    return float(ranked[low] + (ranked[high] - ranked[low]) * (position - low))


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
        reserve: float = DEFAULT_RESERVE_TOKENS,
        min_payoff: float = DEFAULT_MIN_PAYOFF,
        probe_every: int = DEFAULT_PROBE_EVERY,
    ) -> None:
        """``models``: the models to hedge (None: all); ``fixed_delay_s``: None for the adaptive delay."""
        self._models = models
        self._fixed_delay_s = fixed_delay_s
        self._quantile = quantile
        self._min_delay_s = min_delay_s
        self._budget_ratio = budget_ratio
        self._burst = burst
        self._reserve = min(reserve, burst)
        self._tokens = burst
        self._trackers: dict[str, LatencyTracker] = {}
        self._min_payoff = min_payoff
        self._probe_every = probe_every
        self._payoff: dict[str, float] = {}  # model -> moving win rate of its ordinary hedges (optimistic start)
        self._unpaid_candidates: dict[str, int] = {}
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

    def payoff(self, model: str) -> float:
        """The recent win rate of ``model``'s ordinary hedges (1.0 before any)."""
        return self._payoff.get(model, 1.0)

    def worth_it(self, model: str, *, stalled: bool) -> bool:
        """Whether to hedge a candidate at all, before the budget: see Payoff above."""
        if stalled or self.payoff(model) >= self._min_payoff:
            return True
        seen = self._unpaid_candidates.get(model, 0) + 1
        self._unpaid_candidates[model] = seen
        return seen % self._probe_every == 0

    def record_outcome(self, model: str, *, stalled: bool, won: bool) -> None:
        """A hedge's race ended: ``won`` when the hedge answered first."""
        if not stalled:
            self._payoff[model] = (1 - PAYOFF_ALPHA) * self.payoff(model) + PAYOFF_ALPHA * won

    def try_spend(self, *, stalled: bool = False) -> bool:
        """Take one hedge from the budget; False when the budget is spent.

        Only a request held by a stalled worker may spend the reserve.
        """
        floor = 0.0 if stalled else self._reserve
        if self._tokens - floor >= 1.0:
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
