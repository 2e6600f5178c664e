from __future__ import annotations

import numpy as np
import pytest

from tandem.gateway.hedging import MIN_SAMPLES, REFRESH_EVERY, HedgePolicy, LatencyTracker, parse_models


def test_parse_models() -> None:
    assert parse_models("*") is None
    assert parse_models("") == frozenset()
    assert parse_models(" ranker, echo ") == frozenset({"ranker", "echo"})


def test_fixed_delay_is_used_as_given() -> None:
    policy = HedgePolicy(models=None, fixed_delay_s=0.02)
    assert policy.delay_s("any") == 0.02
    assert policy.enabled_for("any")


def test_adaptive_delay_waits_for_samples_then_follows_the_quantile() -> None:
    policy = HedgePolicy(models=None, fixed_delay_s=None, quantile=0.95, min_delay_s=0.0)
    assert policy.delay_s("m") is None
    for i in range(MIN_SAMPLES * 2):
        policy.observe("m", (i % 100) / 1000)
    delay = policy.delay_s("m")
    assert delay is not None and 0.09 <= delay <= 0.1
    assert policy.delay_s("other") is None


def test_min_delay_floors_the_adaptive_delay() -> None:
    policy = HedgePolicy(models=None, fixed_delay_s=None, min_delay_s=0.005)
    for _ in range(MIN_SAMPLES * 2):
        policy.observe("m", 0.0001)
    assert policy.delay_s("m") == 0.005


def test_only_listed_models_are_hedged() -> None:
    policy = HedgePolicy(models=frozenset({"ranker"}), fixed_delay_s=0.01)
    assert policy.enabled_for("ranker") and not policy.enabled_for("echo")


def test_budget_caps_hedges_at_the_ratio_after_the_burst() -> None:
    policy = HedgePolicy(models=None, fixed_delay_s=0.01, budget_ratio=0.05, burst=2.0, reserve=0.0)
    spent = 0
    for _ in range(1000):
        policy.on_request()
        spent += policy.try_spend()
    # The burst (2) plus 5% of 1000 requests, give or take one token.
    assert 50 <= spent <= 52
    assert policy.hedges == spent
    assert policy.denied_by_budget == 1000 - spent


def test_the_reserve_is_only_for_requests_on_a_stalled_worker() -> None:
    policy = HedgePolicy(models=None, fixed_delay_s=0.01, budget_ratio=0.0, burst=5.0, reserve=3.0)
    assert policy.try_spend() and policy.try_spend()
    assert not policy.try_spend(), "ordinary hedges must leave the reserve alone"
    assert policy.try_spend(stalled=True) and policy.try_spend(stalled=True) and policy.try_spend(stalled=True)
    assert not policy.try_spend(stalled=True)
    assert (policy.hedges, policy.denied_by_budget) == (5, 2)


def test_tracker_recomputes_lazily() -> None:
    tracker = LatencyTracker(0.5, window=100)
    for _ in range(MIN_SAMPLES - 1):
        tracker.observe(1.0)
    assert tracker.value_s is None
    for _ in range(100):
        tracker.observe(2.0)
    assert tracker.value_s == pytest.approx(2.0)


def test_tracker_quantile_is_numpys_over_the_latest_window() -> None:
    latencies = np.random.default_rng(7).exponential(0.01, size=1234)
    tracker = LatencyTracker(0.95, window=300)
    for latency in latencies:
        tracker.observe(float(latency))
    # The last refresh came at a multiple of REFRESH_EVERY samples, over the 300 latest then.
    refreshed_at = len(latencies) // REFRESH_EVERY * REFRESH_EVERY
    expected = np.quantile(latencies[refreshed_at - 300 : refreshed_at], 0.95)
    assert tracker.value_s == pytest.approx(expected, rel=1e-12)


def test_losing_ordinary_hedges_are_throttled_to_probes_but_stall_hedges_never_are() -> None:
    policy = HedgePolicy(models=None, fixed_delay_s=0.01, min_payoff=0.3, probe_every=10)
    assert policy.worth_it("m", stalled=False), "before any outcome, hedges are presumed to pay"
    while policy.payoff("m") >= 0.3:
        policy.record_outcome("m", stalled=False, won=False)
    allowed = sum(policy.worth_it("m", stalled=False) for _ in range(100))
    assert allowed == 10
    assert all(policy.worth_it("m", stalled=True) for _ in range(100))
    assert policy.worth_it("other", stalled=False), "payoff is per model"
    policy.record_outcome("m", stalled=True, won=False)  # a stall hedge's loss says nothing of ordinary ones
    for _ in range(60):
        policy.record_outcome("m", stalled=False, won=True)
    assert policy.worth_it("m", stalled=False)
