"""The gateway's drift monitor: sampling, buffering, PSI gauges, reference look-ups and eviction."""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import pytest
from prometheus_client import CollectorRegistry, Gauge

from tandem.common import drift
from tandem.common.wire import Tensor
from tandem.gateway.drift import DriftMonitor

NAMES = ["a", "b", "c"]
METRIC = "tandem_feature_drift_psi"


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class References:
    """A lookup serving one raw reference for every version in ``versions``; counts its calls."""

    def __init__(self, raw: dict[str, Any] | None, versions: tuple[str, ...] = ("1",)) -> None:
        self.raw = raw
        self.versions = versions
        self.calls = 0

    def __call__(self, model: str, version: str) -> dict[str, Any] | None:
        self.calls += 1
        return self.raw if version in self.versions else None


def _training(rows: int = 20_000, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    features = rng.normal(size=(rows, len(NAMES))).astype(np.float32)
    return features, _score(features)


def _score(features: np.ndarray) -> np.ndarray:
    return (1 / (1 + np.exp(-features.sum(axis=1)))).astype(np.float32)


def _raw_reference() -> dict[str, Any]:
    features, scores = _training()
    return drift.build_reference({"features": features}, {"score": scores}, {"features": NAMES}).to_dict()


@pytest.fixture(scope="module")
def raw_reference() -> dict[str, Any]:
    return _raw_reference()


@pytest.fixture
def gauge() -> tuple[Gauge, CollectorRegistry]:
    registry = CollectorRegistry()
    return Gauge(METRIC, "test", ["model", "version", "feature"], registry=registry), registry


def _monitor(references: Any, gauge: Gauge, clock: FakeClock | None = None, **options: Any) -> DriftMonitor:
    settings = {"sample_rows": 64, "half_life_rows": 2000, "min_rows": 500, "flush_rows": 256, **options}
    return DriftMonitor(references, gauge=gauge, clock=clock or FakeClock(), **settings)


def _send(monitor: DriftMonitor, features: np.ndarray, *, version: str = "1", batch: int = 16) -> None:
    for start in range(0, len(features), batch):
        rows = np.ascontiguousarray(features[start : start + batch])
        inputs = [Tensor.from_numpy("features", rows)]
        monitor.observe("ranker", version, inputs, [Tensor.from_numpy("score", _score(rows))])


def _value(registry: CollectorRegistry, feature: str, version: str = "1") -> float | None:
    return registry.get_sample_value(METRIC, {"model": "ranker", "version": version, "feature": feature})


def test_training_like_traffic_stays_low_and_a_shifted_feature_rises(raw_reference, gauge) -> None:
    metric, registry = gauge
    monitor = _monitor(References(raw_reference), metric)
    live = np.random.default_rng(1).normal(size=(4000, 3)).astype(np.float32)
    _send(monitor, live)
    assert all(_value(registry, name) < 0.1 for name in [*NAMES, drift.SCORE_FEATURE])
    shifted = np.random.default_rng(2).normal(size=(8000, 3)).astype(np.float32)
    shifted[:, 1] += 1.5
    _send(monitor, shifted)
    assert _value(registry, "b") > 0.2
    assert _value(registry, "a") < 0.1 and _value(registry, "c") < 0.1
    assert _value(registry, drift.SCORE_FEATURE) > 0.1  # the score moves with the shifted input
    psi = monitor.psi("ranker", "1")
    assert set(psi) == {*NAMES, drift.SCORE_FEATURE} and psi["b"] > 0.2


def test_large_requests_are_sampled_and_nothing_is_exported_before_min_rows(raw_reference, gauge) -> None:
    metric, registry = gauge
    monitor = _monitor(References(raw_reference), metric, sample_rows=10, min_rows=100)
    features, _ = _training(rows=1000, seed=3)
    _send(monitor, features, batch=1000)
    assert monitor.rows_seen("ranker", "1") == 10
    monitor.flush()
    assert _value(registry, "a") is None
    for seed in range(10):
        _send(monitor, _training(rows=1000, seed=10 + seed)[0], batch=1000)
    monitor.flush()
    assert monitor.rows_seen("ranker", "1") == 110
    assert _value(registry, "a") is not None


def test_gauges_are_set_whatever_the_sample_size_per_request(raw_reference, gauge) -> None:
    metric, registry = gauge
    monitor = _monitor(References(raw_reference), metric, min_rows=500, flush_rows=512)
    _send(monitor, _training(rows=3000, seed=11)[0], batch=300)  # 60 sampled rows a request: 512 is never hit exactly
    assert monitor.rows_seen("ranker", "1") == 600
    assert _value(registry, "a") is not None


def test_rows_in_another_datatype_are_binned_as_the_same_values(raw_reference, gauge) -> None:
    features = np.random.default_rng(5).normal(size=(1200, 3)).astype(np.float32)
    features[:, 2] += 1.0
    alike, mixed = (_monitor(References(raw_reference), gauge[0], min_rows=100) for _ in range(2))
    _send(alike, features)
    _send(mixed, features[:608])
    _send(mixed, features[608:].astype(np.float64))  # a caller may send FP64: the same values, other bytes
    assert mixed.rows_seen("ranker", "1") == alike.rows_seen("ranker", "1") == 1200
    assert mixed.psi("ranker", "1") == pytest.approx(alike.psi("ranker", "1"), rel=1e-9)
    assert alike.psi("ranker", "1")["c"] > 0.2


def test_only_every_kth_request_is_sampled(raw_reference, gauge) -> None:
    monitor = _monitor(References(raw_reference), gauge[0], sample_every=3)
    _send(monitor, _training(rows=90, seed=4)[0], batch=1)
    assert monitor.rows_seen("ranker", "1") == 30


def test_gauges_follow_the_flush_interval_between_full_buffers(raw_reference, gauge) -> None:
    metric, registry = gauge
    clock = FakeClock()
    monitor = _monitor(References(raw_reference), metric, clock, min_rows=10, flush_rows=10_000, flush_interval_s=5)
    _send(monitor, _training(rows=100, seed=5)[0])
    assert _value(registry, "a") is None  # buffered, not binned yet
    clock.now = 6.0
    _send(monitor, _training(rows=16, seed=6)[0])
    assert _value(registry, "a") is not None


def test_versions_without_a_reference_are_looked_up_again_later(gauge) -> None:
    clock = FakeClock()
    references = References(None)
    monitor = _monitor(references, gauge[0], clock, retry_s=5)
    features = _training(rows=64, seed=7)[0]
    _send(monitor, features)
    assert references.calls == 1  # four requests, one look-up
    references.raw = _raw_reference()
    _send(monitor, features)
    assert monitor.rows_seen("ranker", "1") == 0
    clock.now = 5.0
    _send(monitor, features)
    assert references.calls == 2 and monitor.rows_seen("ranker", "1") == 64


def test_a_malformed_reference_is_reported_once_and_ignored(gauge, caplog: pytest.LogCaptureFixture) -> None:
    clock = FakeClock()
    monitor = _monitor(References({"format": 1, "rows": 1, "inputs": {"features": []}, "outputs": {}}), gauge[0], clock)
    features = _training(rows=64, seed=8)[0]
    with caplog.at_level(logging.WARNING, logger="tandem.gateway.drift"):
        _send(monitor, features)
        clock.now = 100.0
        _send(monitor, features)
    assert [r.getMessage() for r in caplog.records].count(caplog.records[0].getMessage()) == 1
    assert "not monitored" in caplog.records[0].getMessage()
    assert monitor.psi("ranker", "1") == {}


def test_mismatched_tensors_and_unbinnable_datatypes_are_skipped(raw_reference, gauge) -> None:
    monitor = _monitor(References(raw_reference), gauge[0])
    wide = np.zeros((8, 5), np.float32)
    words = Tensor("features", "BYTES", (1,), b"\x01\x00\x00\x00x")
    monitor.observe("ranker", "1", [Tensor.from_numpy("features", wide)], [])
    monitor.observe("ranker", "1", [words], [Tensor.from_numpy("other", np.zeros(1, np.float32))])
    monitor.observe("ranker", None, [Tensor.from_numpy("features", np.zeros((8, 3), np.float32))], [])
    empty = [Tensor.from_numpy("features", np.zeros((0, 3), np.float32))]
    monitor.observe("ranker", "1", empty, [Tensor.from_numpy("score", np.zeros(0, np.float32))])
    monitor.observe("ranker", "1", [Tensor.from_numpy("features", np.zeros((4, 0), np.float32))], [])
    monitor.observe("ranker", "1", [Tensor.from_numpy("features", np.float32(1.0).reshape(()))], [])
    assert monitor.rows_seen("ranker", "1") == 0


def test_the_least_recently_observed_version_is_dropped_with_its_gauges(raw_reference, gauge) -> None:
    metric, registry = gauge
    monitor = _monitor(References(raw_reference, ("1", "2", "3")), metric, min_rows=10, max_versions=2)
    features = _training(rows=300, seed=9)[0]
    for version in ("1", "2"):
        _send(monitor, features, version=version)
        monitor.flush()
    assert _value(registry, "a", "1") is not None
    _send(monitor, features, version="3")
    assert monitor.rows_seen("ranker", "1") == 0
    assert _value(registry, "a", "1") is None and _value(registry, "a", "2") is not None


def test_a_zero_sample_size_turns_monitoring_off(raw_reference, gauge) -> None:
    references = References(raw_reference)
    monitor = _monitor(references, gauge[0], sample_rows=0)
    _send(monitor, _training(rows=64, seed=10)[0])
    assert not monitor.enabled and references.calls == 0
