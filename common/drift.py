"""Drift between a model's training data and its live traffic: binned references, rolling histograms and PSI.

A **reference** is stored with each registered model version (``REFERENCE_FILE``, JSON, a few KB): for every
column of every input tensor, and of every output tensor, fixed bin ``edges`` and the share of the training
rows in each bin (``proportions``)::

    {"format": 1, "rows": 48000,
     "inputs":  {"features": [{"name": "log_price", "edges": [1.9, 2.3, ...], "proportions": [0.1, ...]}, ...]},
     "outputs": {"score":    [{"name": "__score__", "edges": [...], "proportions": [...]}]}}

Edges are the training quantiles at 10%, 20%, ..., 90% (``DEFAULT_BINS`` bins), rounded and de-duplicated; a
column with at most ``DEFAULT_BINS`` distinct values (a one-hot bit, a flag) gets one bin per value instead.
``k`` edges make ``k + 1`` bins; the first and last are open (``(-inf, e0)`` and ``[e_k-1, +inf)``), so live
values outside the training range still count. A value ``x`` falls in bin ``i`` when ``edges[i-1] <= x <
edges[i]`` (``np.searchsorted(edges, x, "right")``); NaN falls in the first bin. The proportions are those of
the training values binned with the stored (rounded) edges, so a live sample from the training distribution
matches them exactly in expectation.

**PSI** (population stability index) of a column: ``sum((live - ref) * ln(live / ref))`` over its bins, both
shares floored at ``PSI_EPSILON`` so an empty bin on either side stays finite. Rule of thumb: < 0.1 stable,
0.1-0.2 moderate shift, > 0.2 significant shift. A live sample of ``n`` rows from the training distribution
itself has PSI about ``(bins - 1) / n``: export it only once enough rows were seen.

**Rolling histograms** keep live counts with *exponential decay per row*: each batch of ``m`` rows first
multiplies every count by ``0.5 ** (m / half_life_rows)``, then adds its own counts. Chosen over a ring of
per-window counts (or decay per second) because the window is then a number of rows, not of seconds: the
noise of the estimate does not depend on the traffic rate (a quiet model keeps its last estimate rather than
judging a handful of requests), it costs one multiply per batch and no clock, and it never drops a whole
window at once. With half-life ``H`` rows the histogram holds about ``1.44 H`` rows of weight, the most recent
counting most; rows of one batch share one weight.

Pure numpy; thread-compatible, not thread-safe: each ``RollingHistogram`` belongs to one thread.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

REFERENCE_FORMAT = 1
REFERENCE_FILE = "drift_reference.json"
EXTRA_FILES_DIR = "extra_files"
"""Where ``mlflow.<flavor>.log_model(extra_files=[...])`` puts extra files inside a model directory."""
DEFAULT_BINS = 10
EDGE_DIGITS = 6
"""Significant digits kept of each edge: enough to split float32 features, short in JSON."""
PROPORTION_DIGITS = 6
PSI_EPSILON = 1e-4
"""Floor of a bin's share in PSI: an empty bin then adds at most about ``share * ln(share / 1e-4)``."""
SCORE_FEATURE = "__score__"
"""Column name of a model's single score (one output tensor of one column per row)."""
MAX_REFERENCE_COLUMNS = 4096
"""Most columns a reference may describe (inputs and outputs together): references travel in every pong."""
MAX_EDGES = 64
PROPORTION_SUM_TOLERANCE = 1e-3


class BadReference(ValueError):
    """A drift reference that is malformed (its message says where)."""


@dataclass(frozen=True, slots=True)
class ColumnReference:
    """One column's training distribution: sorted ``edges`` (k) and ``proportions`` (k + 1, summing to 1)."""

    name: str
    edges: np.ndarray
    proportions: np.ndarray

    def to_dict(self) -> dict[str, Any]:
        """The JSON form."""
        return {"name": self.name, "edges": self.edges.tolist(), "proportions": self.proportions.tolist()}


@dataclass(frozen=True, slots=True)
class DriftReference:
    """Per tensor name, the column references of a model version's inputs and outputs, and the training rows."""

    inputs: Mapping[str, Sequence[ColumnReference]]
    outputs: Mapping[str, Sequence[ColumnReference]]
    rows: int

    def to_dict(self) -> dict[str, Any]:
        """The JSON form (see the module docstring)."""
        return {
            "format": REFERENCE_FORMAT,
            "rows": self.rows,
            "inputs": {name: [c.to_dict() for c in cols] for name, cols in self.inputs.items()},
            "outputs": {name: [c.to_dict() for c in cols] for name, cols in self.outputs.items()},
        }

    @classmethod
    def from_dict(cls, raw: Any) -> DriftReference:
        """Parse and check the JSON form; ``BadReference`` when anything is off."""
        if not isinstance(raw, Mapping) or raw.get("format") != REFERENCE_FORMAT:
            raise BadReference(f"not a drift reference of format {REFERENCE_FORMAT}")
        rows = raw.get("rows")
        if not isinstance(rows, int) or rows < 0:
            raise BadReference("'rows' must be a count")
        inputs, outputs = _tensors(raw.get("inputs"), "inputs"), _tensors(raw.get("outputs"), "outputs")
        if sum(len(cols) for cols in (*inputs.values(), *outputs.values())) > MAX_REFERENCE_COLUMNS:
            raise BadReference(f"more than {MAX_REFERENCE_COLUMNS} columns")
        return cls(inputs, outputs, rows)


def _tensors(raw: Any, role: str) -> dict[str, list[ColumnReference]]:
    if not isinstance(raw, Mapping):
        raise BadReference(f"'{role}' must map tensor names to column lists")
    tensors = {}
    for name, columns in raw.items():
        if not isinstance(name, str) or not isinstance(columns, list) or not columns:
            raise BadReference(f"{role} {name!r}: a non-empty list of columns is needed")
        tensors[name] = [_column(column, f"{role} {name!r} column {i}") for i, column in enumerate(columns)]
    return tensors


def _column(raw: Any, where: str) -> ColumnReference:
    if not isinstance(raw, Mapping) or not isinstance(raw.get("name"), str):
        raise BadReference(f"{where}: needs a name, edges and proportions")
    try:
        edges = np.asarray(raw["edges"], dtype=np.float64)
        proportions = np.asarray(raw["proportions"], dtype=np.float64)
    except (KeyError, TypeError, ValueError):
        raise BadReference(f"{where}: edges and proportions must be lists of numbers") from None
    if edges.ndim != 1 or not 1 <= edges.size <= MAX_EDGES or not np.isfinite(edges).all():
        raise BadReference(f"{where}: 1 to {MAX_EDGES} finite edges are needed")
    if np.any(np.diff(edges) <= 0):
        raise BadReference(f"{where}: edges must increase")
    if proportions.shape != (edges.size + 1,) or not np.isfinite(proportions).all() or (proportions < 0).any():
        raise BadReference(f"{where}: one non-negative proportion per bin (len(edges) + 1) is needed")
    if abs(proportions.sum() - 1.0) > PROPORTION_SUM_TOLERANCE:
        raise BadReference(f"{where}: proportions must sum to 1")
    return ColumnReference(raw["name"], edges, proportions)


def column_names(tensor: str, count: int, names: Sequence[str] | None = None) -> list[str]:
    """``names`` when given (one per column), else ``tensor[0]``, ``tensor[1]``, ..."""
    if names is not None:
        if len(names) != count:
            raise ValueError(f"{len(names)} names given for the {count} columns of {tensor!r}")
        return list(names)
    return [f"{tensor}[{i}]" for i in range(count)]


def _as_columns(values: np.ndarray) -> np.ndarray:
    """A ``[rows, columns]`` view: dim 0 is rows, every other dim is flattened into columns."""
    array = np.asarray(values)
    return array.reshape(len(array), -1) if array.ndim != 1 else array.reshape(-1, 1)


def bin_edges(values: np.ndarray, bins: int = DEFAULT_BINS) -> np.ndarray:
    """Rounded, increasing, finite edges splitting ``values`` into at most ``bins`` bins (at least one edge).

    A column with at most ``bins`` distinct values gets one bin per value (edges at the midpoints between
    them); any other column gets its quantiles at ``1/bins, ..., (bins-1)/bins``, duplicates merged.
    """
    finite = np.asarray(values, dtype=np.float64)
    finite = finite[np.isfinite(finite)]
    distinct = np.unique(finite)
    if distinct.size <= 1:
        return distinct if distinct.size else np.zeros(1)
    if distinct.size <= bins:
        cuts = (distinct[:-1] + distinct[1:]) / 2
    else:
        cuts = np.quantile(finite, np.arange(1, bins) / bins)
    return np.unique([float(f"{cut:.{EDGE_DIGITS}g}") for cut in cuts])


def bin_index(edges: np.ndarray, values: np.ndarray) -> np.ndarray:
    """The bin of each value: ``edges[i-1] <= x < edges[i]`` is bin ``i`` (0 .. len(edges)); NaN is bin 0."""
    index = np.searchsorted(edges, values, side="right")
    return np.where(np.isnan(values), 0, index)


def column_reference(name: str, values: np.ndarray, bins: int = DEFAULT_BINS) -> ColumnReference:
    """The reference of one column of training values: its edges and the share of values in each bin."""
    values = np.asarray(values).reshape(-1)
    edges = bin_edges(values, bins)
    counts = np.bincount(bin_index(edges, values), minlength=edges.size + 1).astype(np.float64)
    proportions = np.round(counts / max(values.size, 1), PROPORTION_DIGITS)
    if values.size:
        # Rounding may leave the sum a hair off 1; give the difference to the fullest bin.
        proportions[np.argmax(proportions)] += 1.0 - proportions.sum()
    return ColumnReference(name, edges, proportions)


def build_reference(
    inputs: Mapping[str, np.ndarray],
    outputs: Mapping[str, np.ndarray],
    names: Mapping[str, Sequence[str]] | None = None,
    bins: int = DEFAULT_BINS,
) -> DriftReference:
    """The reference of a model version from training ``inputs`` and the model's ``outputs`` on them.

    Arrays are keyed by tensor name with rows first; other dims are flattened into columns. ``names`` may name
    the columns of some tensors; the others get ``tensor[i]``, except that a model with a single one-column
    output names it ``SCORE_FEATURE``.
    """
    names = dict(names or {})
    single = len(outputs) == 1 and _as_columns(next(iter(outputs.values()))).shape[1] == 1
    if single:
        names.setdefault(next(iter(outputs)), [SCORE_FEATURE])

    def describe(tensors: Mapping[str, np.ndarray]) -> dict[str, list[ColumnReference]]:
        described = {}
        for tensor, values in tensors.items():
            columns = _as_columns(values)
            labels = column_names(tensor, columns.shape[1], names.get(tensor))
            described[tensor] = [column_reference(label, columns[:, i], bins) for i, label in enumerate(labels)]
        return described

    rows = {len(_as_columns(values)) for values in (*inputs.values(), *outputs.values())}
    if len(rows) > 1:
        raise ValueError(f"inputs and outputs must have the same number of rows, got {sorted(rows)}")
    return DriftReference(describe(inputs), describe(outputs), rows.pop() if rows else 0)


def write_reference(reference: DriftReference, path: Path) -> Path:
    """Write ``reference`` as compact JSON to ``path``; returns ``path``."""
    path.write_text(json.dumps(reference.to_dict(), separators=(",", ":")))
    return path


def find_reference(model_dir: Path) -> dict[str, Any] | None:
    """The raw reference stored in a fetched model directory (in ``extra_files/`` or at its top), if any.

    Raises ``BadReference`` when a file is there but is not a valid reference.
    """
    for path in (model_dir / EXTRA_FILES_DIR / REFERENCE_FILE, model_dir / REFERENCE_FILE):
        if path.is_file():
            try:
                raw = json.loads(path.read_text())
            except (OSError, ValueError) as exc:
                raise BadReference(f"cannot read {path.name}: {exc}") from None
            DriftReference.from_dict(raw)  # checked here, so a bad file is reported where the model loads
            return raw
    return None


def psi(reference: np.ndarray, live: np.ndarray, epsilon: float = PSI_EPSILON) -> np.ndarray:
    """PSI of ``live`` shares against ``reference`` shares, summed over the last axis (bins).

    Both are arrays of shares (each row summing to 1, or all zeros for a live histogram with no rows). Shares
    are floored at ``epsilon``; bins where both are 0 (padding) add exactly 0.
    """
    expected = np.maximum(reference, epsilon)
    actual = np.maximum(live, epsilon)
    return np.sum((actual - expected) * np.log(actual / expected), axis=-1)


class BinnedColumns:
    """The bins of several columns at once: their edges padded with ``+inf`` into one ``[columns, width]`` matrix.

    ``counts`` bins a whole ``[rows, columns]`` batch at once: the bin of ``x`` in a column is the number of its
    edges ``<= x`` (as ``searchsorted(..., "right")``), and padding edges of ``+inf`` are never ``<=`` a finite
    ``x``; ``+inf`` values are clipped to the column's last bin, NaN compares false and lands in bin 0.
    """

    def __init__(self, edges: Sequence[np.ndarray]) -> None:
        if not edges:
            raise ValueError("at least one column is needed")
        self.columns = len(edges)
        width = max(e.size for e in edges)
        self.width = width + 1
        """Bins per column in the padded layout: columns with fewer edges leave their last bins empty."""
        self._edges = np.full((self.columns, width), np.inf)
        for i, column in enumerate(edges):
            self._edges[i, : column.size] = column
        self._last = np.array([e.size for e in edges], dtype=np.intp)
        self._offsets = np.arange(self.columns, dtype=np.intp) * self.width
        self._size = self.columns * self.width

    def counts(self, values: np.ndarray) -> np.ndarray:
        """Bin counts of a float64 ``[rows, columns]`` batch: int64 ``[columns, width]``."""
        index = np.zeros(values.shape, dtype=np.intp)
        # One pass per edge rank over the whole batch: cheaper than a 3-D comparison or a searchsorted per column.
        for rank in range(self._edges.shape[1]):
            index += values >= self._edges[:, rank]
        np.minimum(index, self._last, out=index)
        index += self._offsets
        return np.bincount(index.ravel(), minlength=self._size).reshape(self.columns, self.width)

    def padded(self, per_column: Sequence[np.ndarray]) -> np.ndarray:
        """``[columns, width]`` shares from one array per column (``len(edges) + 1`` each), zero-padded."""
        out = np.zeros((self.columns, self.width))
        for i, shares in enumerate(per_column):
            out[i, : shares.size] = shares
        return out


class RollingHistogram:
    """Live bin counts of several columns with exponential decay per row (see the module docstring)."""

    def __init__(self, bins: BinnedColumns, half_life_rows: float) -> None:
        if half_life_rows <= 0:
            raise ValueError(f"half_life_rows must be positive, got {half_life_rows}")
        self.bins = bins
        self._decay_per_row = math.pow(0.5, 1.0 / half_life_rows)
        self.counts = np.zeros((bins.columns, bins.width))
        self.weight = 0.0
        """Decayed number of rows the counts hold."""
        self.rows = 0
        """Rows added in all (not decayed)."""

    def add(self, values: np.ndarray) -> None:
        """Age what is held by ``len(values)`` rows, then count the ``[rows, columns]`` batch ``values``."""
        count = len(values)
        if count == 0:
            return
        factor = self._decay_per_row**count
        self.counts *= factor
        self.counts += self.bins.counts(values)
        self.weight = self.weight * factor + count
        self.rows += count

    def shares(self) -> np.ndarray:
        """``[columns, width]`` shares of the held weight per bin (zeros before any row)."""
        if self.weight <= 0:
            return np.zeros_like(self.counts)
        return self.counts / self.weight
