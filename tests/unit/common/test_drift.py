"""Drift math: bin edges, binning, rolling histograms with decay, PSI, and the reference's JSON form."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from tandem.common import drift

ROWS = 50_000


def _reference(values: np.ndarray) -> drift.ColumnReference:
    return drift.column_reference("x", values)


def _live_psi(reference: drift.ColumnReference, live: np.ndarray) -> float:
    bins = drift.BinnedColumns([reference.edges])
    histogram = drift.RollingHistogram(bins, half_life_rows=1e9)
    histogram.add(live.reshape(-1, 1).astype(np.float64))
    return float(drift.psi(bins.padded([reference.proportions]), histogram.shares())[0])


def test_psi_of_a_distribution_against_itself_is_about_zero() -> None:
    rng = np.random.default_rng(0)
    reference = _reference(rng.normal(size=ROWS))
    assert drift.psi(reference.proportions, reference.proportions) == 0.0
    assert _live_psi(reference, rng.normal(size=ROWS)) < 0.01


def test_psi_of_a_shifted_distribution_is_significant() -> None:
    rng = np.random.default_rng(1)
    reference = _reference(rng.normal(size=ROWS))
    assert _live_psi(reference, rng.normal(loc=1.0, size=ROWS)) > 0.2
    assert _live_psi(reference, rng.normal(scale=2.0, size=ROWS)) > 0.2
    assert _live_psi(reference, rng.normal(loc=0.1, size=ROWS)) < 0.1


def test_psi_floors_empty_bins_at_epsilon_and_padding_adds_nothing() -> None:
    reference = np.array([[0.5, 0.5, 0.0], [1.0, 0.0, 0.0]])
    live = np.array([[0.5, 0.5, 0.0], [0.0, 1.0, 0.0]])
    values = drift.psi(reference, live)
    assert values[0] == 0.0
    expected = 2 * (1.0 - drift.PSI_EPSILON) * np.log(1.0 / drift.PSI_EPSILON)
    assert values[1] == pytest.approx(expected)


def test_quantile_edges_give_equal_shares_and_discrete_columns_one_bin_per_value() -> None:
    rng = np.random.default_rng(2)
    continuous = _reference(rng.uniform(size=ROWS))
    assert continuous.edges.size == drift.DEFAULT_BINS - 1
    np.testing.assert_allclose(continuous.proportions, 0.1, atol=0.01)

    flag = _reference((rng.uniform(size=ROWS) < 0.05).astype(np.float32))  # rare one-hot bit: still its own bin
    np.testing.assert_array_equal(flag.edges, [0.5])
    assert flag.proportions[1] == pytest.approx(0.05, abs=0.01)

    counts = _reference(rng.integers(0, 4, size=ROWS) / 10)
    np.testing.assert_allclose(counts.edges, [0.05, 0.15, 0.25])

    constant = _reference(np.full(100, 3.0))
    np.testing.assert_array_equal(constant.edges, [3.0])
    np.testing.assert_array_equal(constant.proportions, [0.0, 1.0])


def test_proportions_sum_to_one_and_edges_are_short() -> None:
    reference = _reference(np.random.default_rng(3).lognormal(size=ROWS).astype(np.float32))
    assert reference.proportions.sum() == pytest.approx(1.0, abs=1e-12)
    assert all(len(repr(edge)) <= 12 for edge in reference.edges.tolist())


def test_batch_binning_matches_searchsorted_including_edges_nan_and_infinities() -> None:
    rng = np.random.default_rng(4)
    edges = [np.array([-1.0, 0.0, 1.0]), np.array([0.5]), np.array([-2.0, -1.0, 0.0, 1.0, 2.0])]
    values = rng.normal(size=(500, 3)) * 2
    values[:10] = [[-1.0, 0.5, 2.0]] * 10  # exactly on an edge: the upper bin
    values[10] = [np.nan, np.inf, -np.inf]
    bins = drift.BinnedColumns(edges)
    counts = bins.counts(values)
    assert counts.shape == (3, 6)
    for column, column_edges in enumerate(edges):
        expected = np.bincount(drift.bin_index(column_edges, values[:, column]), minlength=column_edges.size + 1)
        np.testing.assert_array_equal(counts[column, : column_edges.size + 1], expected)
        assert counts[column, column_edges.size + 1 :].sum() == 0


def test_rolling_histogram_halves_old_rows_after_a_half_life() -> None:
    bins = drift.BinnedColumns([np.array([0.0])])
    histogram = drift.RollingHistogram(bins, half_life_rows=100)
    histogram.add(np.full((100, 1), -1.0))
    histogram.add(np.full((100, 1), 1.0))
    np.testing.assert_allclose(histogram.shares()[0], [1 / 3, 2 / 3])
    assert histogram.weight == pytest.approx(150.0)
    assert histogram.rows == 200
    histogram.add(np.empty((0, 1)))
    assert histogram.rows == 200
    with pytest.raises(ValueError, match="positive"):
        drift.RollingHistogram(bins, half_life_rows=0)


def test_build_reference_names_columns_and_the_single_score() -> None:
    rng = np.random.default_rng(5)
    inputs = {"features": rng.normal(size=(1000, 3)).astype(np.float32), "extra": rng.normal(size=(1000, 2, 2))}
    reference = drift.build_reference(inputs, {"score": rng.uniform(size=1000)}, {"features": ["a", "b", "c"]})
    assert [c.name for c in reference.inputs["features"]] == ["a", "b", "c"]
    assert [c.name for c in reference.inputs["extra"]] == ["extra[0]", "extra[1]", "extra[2]", "extra[3]"]
    assert [c.name for c in reference.outputs["score"]] == [drift.SCORE_FEATURE]
    assert reference.rows == 1000
    several = drift.build_reference({"x": inputs["features"]}, {"y": rng.normal(size=(1000, 2))})
    assert [c.name for c in several.outputs["y"]] == ["y[0]", "y[1]"]
    with pytest.raises(ValueError, match="same number of rows"):
        drift.build_reference({"x": inputs["features"]}, {"y": rng.normal(size=10)})
    with pytest.raises(ValueError, match="names"):
        drift.build_reference({"x": inputs["features"]}, {}, {"x": ["only-one"]})


def test_reference_round_trips_through_json_in_a_model_directory(tmp_path: Path) -> None:
    rng = np.random.default_rng(6)
    reference = drift.build_reference({"x": rng.normal(size=(500, 2))}, {"y": rng.uniform(size=500)})
    (tmp_path / drift.EXTRA_FILES_DIR).mkdir()
    drift.write_reference(reference, tmp_path / drift.EXTRA_FILES_DIR / drift.REFERENCE_FILE)
    raw = drift.find_reference(tmp_path)
    assert raw == json.loads(json.dumps(reference.to_dict()))
    parsed = drift.DriftReference.from_dict(raw)
    np.testing.assert_array_equal(parsed.inputs["x"][1].edges, reference.inputs["x"][1].edges)
    np.testing.assert_array_equal(parsed.outputs["y"][0].proportions, reference.outputs["y"][0].proportions)
    assert drift.find_reference(tmp_path / "elsewhere") is None


@pytest.mark.parametrize(
    ("column", "message"),
    [
        ({"name": "x", "edges": [1.0, 0.0], "proportions": [0.2, 0.3, 0.5]}, "increase"),
        ({"name": "x", "edges": [0.0], "proportions": [1.0]}, "one non-negative proportion per bin"),
        ({"name": "x", "edges": [0.0], "proportions": [0.2, 0.2]}, "sum to 1"),
        ({"name": "x", "edges": [], "proportions": [1.0]}, "finite edges"),
        ({"name": "x", "edges": ["a"], "proportions": [0.5, 0.5]}, "lists of numbers"),
        ({"edges": [0.0], "proportions": [0.5, 0.5]}, "needs a name"),
    ],
)
def test_malformed_references_are_refused(column: dict, message: str) -> None:
    raw = {"format": drift.REFERENCE_FORMAT, "rows": 1, "inputs": {"x": [column]}, "outputs": {}}
    with pytest.raises(drift.BadReference, match=message):
        drift.DriftReference.from_dict(raw)


def test_unknown_formats_and_unreadable_files_are_refused(tmp_path: Path) -> None:
    with pytest.raises(drift.BadReference, match="format"):
        drift.DriftReference.from_dict({"format": 99})
    (tmp_path / drift.REFERENCE_FILE).write_text("{not json")
    with pytest.raises(drift.BadReference, match="cannot read"):
        drift.find_reference(tmp_path)
