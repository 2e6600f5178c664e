"""The benchmark's judging logic on made-up figures: ratios, interpolation, PASS/MISS."""

from __future__ import annotations

import math

from benchmarks.baselines.raw_torch import best, throughput_for_mix
from benchmarks.loadgen import LoadResult
from benchmarks.targets import Check, evaluate, throughput_at_p99


def point(offered: float, achieved: float, p99: float, *, sustained: bool = True, fraction: float = 0.5) -> dict:
    latency = {"p50": p99 / 1.4, "p90": p99 / 1.2, "p99": p99, "p999": p99 * 1.2}
    return {
        "offered_rps": offered, "throughput_rps": achieved, "sustained": sustained, "fraction": fraction,
        "latency_ms": {"200": latency}, "goodput_rps": achieved,
    }  # fmt: skip


def test_throughput_at_p99_interpolates_to_the_budget() -> None:
    points = [point(100, 100, 10), point(200, 200, 20), point(300, 300, 40)]
    assert throughput_at_p99(points, 20) == 200
    assert math.isclose(throughput_at_p99(points, 30), 250)
    assert throughput_at_p99(points, 5) == 0.0


def test_unsustained_points_never_count() -> None:
    points = [point(100, 100, 10), point(200, 150, 15, sustained=False)]
    assert throughput_at_p99(points, 100) == 100


def test_b0_mix_uses_the_per_call_time_of_each_batch_size() -> None:
    table = {1: {"call_ms": 1.0, "rows_per_s": 1000.0}, 4: {"call_ms": 2.0, "rows_per_s": 2000.0}}
    assert best(table) == (4, 2000.0)
    # two batches of 4 rows (2 ms each) and two of 1 (1 ms each): 10 rows in 6 ms
    assert math.isclose(throughput_for_mix(table, {4: 2, 1: 2}), 10 / 0.006)
    # a batch of 2.5 rows is timed between the measured sizes
    assert math.isclose(throughput_for_mix(table, {2.5: 1}), 2.5 / 0.0015)


def test_checks_pass_and_miss_on_their_bounds() -> None:
    assert Check("g", "n", 1.0, 1.0, True, "").verdict == "PASS"
    assert Check("g", "n", 0.99, 1.0, True, "").verdict == "MISS"
    assert Check("g", "n", 1.5, 1.5, False, "").verdict == "PASS"
    assert Check("g", "n", float("nan"), 1.5, False, "").verdict == "MISS"


def test_evaluate_reads_a_report() -> None:
    one = {"latency_ms": {"200": {"p50": 1.0, "p99": 2.0, "p999": 3.0}}}
    tandem = {"saturation": {"max_rps": 900.0}, "one_client": one, "sweep": [point(630, 630, 3, fraction=0.7)]}
    b1 = {"saturation": {"max_rps": 1000.0}, "one_client": one}
    report = {
        "light": {"systems": {"tandem": tandem, "B1": b1, "B2": {"saturation": {"max_rps": 1000.0}}}},
        "scaling": {"workers": {"1": {"max_rps": 100.0}, "4": {"max_rps": 380.0}}},
    }
    verdicts = {c.name: c.verdict for c in evaluate(report)}
    assert verdicts["throughput Tandem/B1"] == "MISS"
    assert verdicts["throughput Tandem/B2"] == "PASS"
    assert verdicts["no regret, one client: p50 Tandem/B1"] == "PASS"
    assert verdicts["tail at 70% load: p99/p50"] == "PASS"  # p99 / p50 = 1.4
    assert verdicts["4 workers / 1 worker"] == "PASS"


def test_the_minilm_tail_is_shown_beside_an_ideal_batchers() -> None:
    one = {"latency_ms": {"200": {"p50": 1.0, "p99": 2.0, "p999": 3.0}}}
    tandem = {"saturation": {"max_rps": 200.0}, "one_client": one, "sweep": [point(140, 140, 90, fraction=0.7)]}
    ideal = {"p99_over_p50": 2.59, "p999_over_p50": 3.34}
    minilm = {"systems": {"tandem": tandem}, "b0": {"best_rps": 120.0, "batch1_rps": 70.0}, "ideal_tail": ideal}
    tails = [c for c in evaluate({"minilm": minilm}) if c.name.startswith("tail")]
    assert [c.detail.rsplit(": ", 1)[-1] for c in tails] == ["2.59", "3.34"]
    assert [c.verdict for c in tails] == ["PASS", "PASS"]  # judged on what was measured, not on the reference


def test_a_load_result_summarises_goodput_within_the_deadline() -> None:
    result = LoadResult(mode="open", elapsed_s=1.0, sent=4)
    for status, latency in ((200, 0.01), (200, 0.2), (503, 0.001), (200, 0.05)):
        result.record(status, latency)
    summary = result.summary(deadline_s=0.1)
    assert summary["goodput_rps"] == 2.0 and summary["throughput_rps"] == 3.0
    assert summary["statuses"] == {"200": 3, "503": 1}
    assert set(summary["latency_ms"]) == {"200", "503"}
