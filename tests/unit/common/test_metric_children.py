"""Metric children looked up once per label set."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter

from tandem.common.metric_children import child


def test_a_label_set_is_looked_up_once_and_counts_land_in_its_series() -> None:
    registry = CollectorRegistry()
    counter = Counter("tandem_test_total", "test", ["model", "status"], registry=registry)
    first = child(counter, "ranker", "200")
    assert child(counter, "ranker", "200") is first is counter.labels("ranker", "200")
    first.inc()
    child(counter, "ranker", "503").inc(2)
    assert registry.get_sample_value("tandem_test_total", {"model": "ranker", "status": "200"}) == 1
    assert registry.get_sample_value("tandem_test_total", {"model": "ranker", "status": "503"}) == 2
