"""The ideal dynamic batcher's simulation, against queueing theory's closed forms where they exist."""

from __future__ import annotations

import numpy as np
import pytest

from benchmarks.queueing import CallTime, call_time_from_table, ideal_latencies_s, ideal_tail

TEN_MS = 0.010


def fixed(seconds: float) -> CallTime:
    return lambda rows: seconds


def linear(fixed_s: float, per_row_s: float) -> CallTime:
    return lambda rows: fixed_s + per_row_s * rows


def test_a_lone_request_takes_exactly_one_call() -> None:
    tail = ideal_tail(0.1, fixed(TEN_MS), workers=1, max_rows=8, requests=2000)
    assert tail["p50_ms"] == pytest.approx(10.0)


def test_one_row_batches_on_one_worker_match_the_m_d_1_queue() -> None:
    # Pollaczek-Khinchine: a deterministic service S at load rho waits rho * S / (2 * (1 - rho)) on average.
    rate, rho = 50.0, 0.5
    latencies = ideal_latencies_s(rate, fixed(TEN_MS), workers=1, max_rows=1, requests=200_000, seed=3)
    expected_s = TEN_MS + rho * TEN_MS / (2 * (1 - rho))
    assert latencies[20_000:].mean() == pytest.approx(expected_s, rel=0.03)


def test_batching_serves_a_rate_past_the_one_row_capacity() -> None:
    # 10 ms + 1 ms a row: 91 req/s in batches of one, up to 865 req/s in batches of 64.
    call = linear(TEN_MS, 0.001)
    batched = ideal_tail(200.0, call, workers=1, max_rows=64, requests=20_000)
    one_by_one = ideal_tail(200.0, call, workers=1, max_rows=1, requests=20_000)
    assert batched["p99_ms"] < 100
    assert one_by_one["p50_ms"] > 1000  # a queue that only grows


def test_a_second_worker_shortens_the_wait() -> None:
    one = ideal_latencies_s(80.0, fixed(TEN_MS), workers=1, max_rows=1, requests=50_000)
    two = ideal_latencies_s(80.0, fixed(TEN_MS), workers=2, max_rows=1, requests=50_000)
    assert two.min() == pytest.approx(TEN_MS)
    assert two.mean() < one.mean()


def test_the_tail_of_poisson_arrivals_is_wide_even_for_an_ideal_batcher() -> None:
    # MiniLM-like call times (6 ms + 8.3 ms a row) on two workers at 70% of what 16-row batches reach.
    call = linear(0.006, 0.0083)
    capacity = 2 * 16 / call(16)
    tail = ideal_tail(0.7 * capacity, call, workers=2, max_rows=16, requests=50_000)
    assert tail["p99_over_p50"] > 1.5


def test_call_times_interpolate_between_measured_sizes_and_extend_past_the_largest() -> None:
    call = call_time_from_table({1: {"call_ms": 10.0}, 4: {"call_ms": 16.0}, 8: {"call_ms": 24.0}})
    assert call(1) == pytest.approx(0.010)
    assert call(2) == pytest.approx(0.012)
    assert call(16) == pytest.approx(0.040)
    assert np.isfinite(call(1000))
