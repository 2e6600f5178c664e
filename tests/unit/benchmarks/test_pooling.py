"""Pooling load results and scaling phase durations: pure logic of the benchmark's measurements."""

from __future__ import annotations

from benchmarks.loadgen import LoadResult
from benchmarks.measure import Durations


def _result(latencies: dict[int, list[float]], *, elapsed_s: float, sent: int) -> LoadResult:
    result = LoadResult(mode="open", offered_rps=10.0, elapsed_s=elapsed_s, sent=sent)
    for status, each in latencies.items():
        for latency in each:
            result.record(status, latency)
    return result


def test_pooled_results_hold_every_request_of_every_run() -> None:
    first = _result({200: [0.01, 0.02], 503: [0.001]}, elapsed_s=1.0, sent=4)
    first.errors["unanswered"] = 1
    first.client_delays_s.append(0.0005)
    second = _result({200: [0.03]}, elapsed_s=2.0, sent=1)
    pool = LoadResult.pooled([first, second])
    assert sorted(pool.latencies_s) == [0.001, 0.01, 0.02, 0.03]
    assert pool.latencies_by_status == {200: [0.01, 0.02, 0.03], 503: [0.001]}
    assert pool.statuses == {200: 3, 503: 1}
    assert pool.errors == {"unanswered": 1}
    assert pool.client_delays_s == [0.0005]
    assert (pool.elapsed_s, pool.sent, pool.mode, pool.offered_rps) == (3.0, 5, "open", 10.0)
    assert pool.throughput == 1.0
    # The runs pooled are left as they were.
    assert first.latencies_by_status[200] == [0.01, 0.02] and first.sent == 4


def test_pooled_percentiles_rank_across_runs() -> None:
    fast = _result({200: [0.001] * 99}, elapsed_s=1.0, sent=99)
    slow = _result({200: [0.5]}, elapsed_s=1.0, sent=1)
    pool = LoadResult.pooled([fast, slow])
    assert pool.percentile_ms(50) == 1.0
    assert pool.percentile_ms(100) == 500.0


def test_quick_durations_shorten_every_phase_and_stretch_no_point() -> None:
    full = Durations()
    quick = full.scaled(0.5)
    assert full.p99_requests > 0 and quick.p99_requests == 0
    assert full.p999_requests > 0 and quick.p999_requests == 0
    assert quick.one_client_s == full.one_client_s / 2
    assert quick.tail_s == full.tail_s / 2


def test_the_tail_point_stretches_toward_its_request_count_within_a_bound() -> None:
    durations = Durations(tail_s=10.0, p999_requests=10_000)
    assert durations.tail_seconds(5_000.0) == 10.0  # 50,000 requests in 10 s already
    assert durations.tail_seconds(500.0) == 20.0
    assert durations.tail_seconds(50.0) == 30.0  # would need 200 s: three times tail_s at most
    assert Durations(tail_s=4.0, p999_requests=0).tail_seconds(50.0) == 4.0
