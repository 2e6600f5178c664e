from __future__ import annotations

import pytest

from tandem.worker.latency import MIN_BATCHES, BatchLatencyModel


def test_no_prediction_until_enough_batches() -> None:
    model = BatchLatencyModel()
    for _ in range(MIN_BATCHES - 1):
        model.observe("k", 4, 0.01)
    assert model.predict("k", 4) is None
    model.observe("k", 4, 0.01)
    assert model.predict("k", 4) == pytest.approx(0.01)
    assert model.predict("other", 4) is None


def test_fits_fixed_and_per_row_cost() -> None:
    model = BatchLatencyModel()
    for rows in [1, 2, 4, 8, 16, 32] * 10:
        model.observe("k", rows, 0.005 + 0.001 * rows)
    assert model.predict("k", 64) == pytest.approx(0.069, rel=1e-6)
    assert model.predict("k", 1) == pytest.approx(0.006, rel=1e-6)


def test_constant_batch_size_scales_up_conservatively() -> None:
    model = BatchLatencyModel()
    for _ in range(20):
        model.observe("k", 8, 0.008)
    assert model.predict("k", 4) == pytest.approx(0.008)
    assert model.predict("k", 16) == pytest.approx(0.016)


def test_a_rare_stall_is_capped() -> None:
    model = BatchLatencyModel()
    for _ in range(20):
        model.observe("k", 1, 0.005)
    model.observe("k", 1, 5.0)
    predicted = model.predict("k", 1)
    assert predicted is not None and predicted < 0.01


def test_forget_drops_the_fit() -> None:
    model = BatchLatencyModel()
    for _ in range(10):
        model.observe("k", 1, 0.005)
    model.forget("k")
    assert model.predict("k", 1) is None
