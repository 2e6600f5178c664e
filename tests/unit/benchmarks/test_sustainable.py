"""The search for a system's max sustainable load, on made-up open-loop points."""

from __future__ import annotations

from typing import Any

from benchmarks.measure import bisect_sustainable, meets_slo
from benchmarks.targets import evaluate


def run_at(rate: float, p99_ms: float, *, sustained: bool = True, goodput: float | None = None) -> dict[str, Any]:
    return {
        "offered_rps": rate, "sustained": sustained, "goodput_rps": rate if goodput is None else goodput,
        "latency_ms": {"200": {"p50": p99_ms / 2, "p99": p99_ms}},
    }  # fmt: skip


class System:
    """Meets a 100 ms p99 below ``capacity`` req/s; records the rates it was probed at."""

    def __init__(self, capacity: float) -> None:
        self.capacity = capacity
        self.probed: list[float] = []

    def probe(self, rate: float) -> dict[str, Any]:
        self.probed.append(rate)
        return run_at(rate, 10.0 if rate <= self.capacity else 400.0, sustained=rate <= self.capacity * 1.05)


def test_a_point_meets_the_slo_only_when_sustained_and_within_the_deadline() -> None:
    assert meets_slo(run_at(100, 99.0), 100)
    assert not meets_slo(run_at(100, 101.0), 100)
    assert not meets_slo(run_at(100, 10.0, sustained=False), 100)
    assert not meets_slo({"sustained": True, "latency_ms": {"503": {"p99": 1.0}}}, 100)


def test_bisection_narrows_between_the_sweep_points_that_bracket_capacity() -> None:
    system = System(capacity=2600)
    sweep = [run_at(1000, 5), run_at(2000, 8), run_at(3000, 400, sustained=False), run_at(4000, 900)]
    found = bisect_sustainable(sweep, 100, system.probe, steps=3)
    assert system.probed == [2500, 2750, 2625]
    assert found["rps"] == 2500  # the fastest rate seen to meet the SLO
    assert len(found["probes"]) == 3


def test_a_noisy_failure_below_a_met_point_does_not_lower_the_bracket() -> None:
    system = System(capacity=3500)
    sweep = [run_at(1000, 5), run_at(2000, 300), run_at(3000, 8), run_at(4000, 900)]
    found = bisect_sustainable(sweep, 100, system.probe, steps=1)
    assert system.probed == [3500]
    assert found["rps"] == 3500


def test_nothing_is_probed_when_every_point_meets_the_slo() -> None:
    system = System(capacity=10_000)
    found = bisect_sustainable([run_at(1000, 5), run_at(2000, 8)], 100, system.probe, steps=3)
    assert system.probed == []
    assert found["rps"] == 2000


def test_the_search_runs_below_the_slowest_point_when_none_meets_the_slo() -> None:
    system = System(capacity=300)
    found = bisect_sustainable([run_at(1000, 500), run_at(2000, 900)], 100, system.probe, steps=2)
    assert system.probed == [500, 250]
    assert found["rps"] == 250


def test_overload_is_judged_against_the_best_goodput_of_sweep_and_probes() -> None:
    tandem = {
        "saturation": {"max_rps": 4000.0},
        "sweep": [{**run_at(1000, 5), "fraction": 0.25}, {**run_at(3000, 400, goodput=1500), "fraction": 0.75}],
        "sustainable": {"rps": 2500.0, "probes": [run_at(2500, 20, goodput=2450)]},
        "overload": {
            "offered_rps": 5000.0, "deadline_ms": 100.0, "goodput_rps": 2300.0,
            "statuses": {"200": 2300, "503": 2700},
            "latency_ms": {"200": {"p99": 50.0}, "503": {"p99": 4.0}},
        },
    }  # fmt: skip
    checks = {c.name: c for c in evaluate({"light": {"systems": {"tandem": tandem}}})}
    goodput = checks["overload 2x: goodput / peak goodput"]
    assert goodput.value == 2300 / 2450
    assert goodput.verdict == "PASS"
    assert "2 x 2500 sustainable" in goodput.detail
    assert checks["overload 2x: rejection p99 (ms)"].verdict == "PASS"
