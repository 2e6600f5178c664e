"""Live drift of each served model version against its training distribution, as Prometheus gauges.

Each registered version may carry a drift reference (``tandem.common.drift``: bin edges and training shares of
every input and output column); workers send it in their pongs as the model entry's ``drift_reference``. The
``DriftMonitor`` keeps, per (model, version), a rolling histogram of the live values of each column of each
tensor the reference knows, and exports every column's PSI as
``tandem_feature_drift_psi{model, version, feature}``: the feature is the reference's column name (the
ranker's ``FEATURE_NAMES``, and ``__score__`` for its output) or ``tensor[i]``.

Hot path. ``observe`` runs on the event loop after every successful reply and only *copies*: for one request
in ``sample_every`` per version, at most ``sample_rows`` rows of each known tensor (an evenly strided sample
from a random offset, so the first rows of a ranked catalog are not favoured) go into a per-tensor buffer of
``flush_rows`` rows. When a buffer fills, or ``flush_interval_s`` after the last flush, the buffered rows are
binned in one vectorized pass, added to the rolling histogram (exponential decay per row, half-life
``half_life_rows``), and, once ``min_rows`` rows were seen, the gauges are set. A scrape reads plain gauges, so
this works in prometheus-client's multiprocess mode too (each process's latest value: ``livemostrecent``);
the gauges lag traffic by at most a buffer or ``flush_interval_s``.

Reading the gauges: PSI from ``n`` independent rows drawn from the training distribution itself is about
``(bins - 1) / n``, hence ``min_rows``. Rows of one request are not independent: the candidates of one
``/v1/recommendations`` call share one user, so for user features the sample size is the number of requests,
not of rows, and their PSI reads high until a few hundred requests were seen (the half-life, 20,000 rows by
default, holds about a thousand such requests).

A version without a reference, or with one that does not parse, is not monitored; its reference is looked up
again ``retry_s`` later (a pong may not have listed it yet). At most ``max_versions`` versions are tracked;
the least recently observed one is dropped, with its gauges.

Ownership: the event loop thread only (``observe``, ``flush``, ``psi``); no locks.
"""

from __future__ import annotations

import logging
import math
import random
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from contextlib import suppress
from typing import Any, Protocol

import numpy as np
from prometheus_client import Gauge

from tandem.common import drift
from tandem.common.datatypes import NUMPY_BY_DATATYPE
from tandem.common.settings import GatewaySettings
from tandem.common.wire import Tensor
from tandem.gateway import metrics

log = logging.getLogger("tandem.gateway.drift")

FLUSH_ROWS = 512
"""Rows buffered per tensor before they are binned: binning is ~0.2 us a row in bulk against ~5 us per request."""
FLUSH_INTERVAL_S = 5.0
"""Longest a sampled row waits in a buffer, so the gauges follow even light traffic."""
RETRY_S = 5.0
"""How long a version found without a usable reference is left alone before its reference is looked up again."""
MAX_VERSIONS = 16
BINNABLE = frozenset(NUMPY_BY_DATATYPE) - {"BF16"}
"""Datatypes whose raw values can be compared with edges (BF16 words and BYTES cannot)."""

ReferenceLookup = Callable[[str, str], Any]
"""``(model, version) -> raw reference`` (the pong's ``drift_reference``) or None."""
Clock = Callable[[], float]


class ModelTable(Protocol):
    """What the monitor needs of the worker pool: the served models table built from pongs."""

    def models(self) -> dict[str, dict[str, dict[str, Any]]]: ...


def pool_references(pool: ModelTable) -> ReferenceLookup:
    """Look references up in what live workers describe in their pongs."""

    def lookup(model: str, version: str) -> Any:
        entry = pool.models().get(model, {}).get(version)
        return None if entry is None else entry.get("drift_reference")

    return lookup


class _Stream:
    """One tensor of one version: its reference, the sampled rows not yet binned, and the rolling histogram.

    Sampled rows wait as raw bytes in the datatype the tensor came in (the first one seen; another is converted
    to it): appending a request's rows is one bytes copy, where copying them into a float array cost about
    5 us a request, a few percent of the gateway's CPU on a light model. They become floats when binned.
    """

    __slots__ = ("capacity", "children", "columns", "dtype", "filled", "histogram", "names", "pending", "reference")

    def __init__(self, columns: Sequence[drift.ColumnReference], capacity: int, half_life_rows: float) -> None:
        bins = drift.BinnedColumns([c.edges for c in columns])
        self.names = [c.name for c in columns]
        self.reference = bins.padded([c.proportions for c in columns])
        self.histogram = drift.RollingHistogram(bins, half_life_rows)
        self.columns = len(columns)
        self.capacity = capacity
        self.pending = bytearray()
        self.dtype: np.dtype | None = None
        self.filled = 0
        self.children: list[Any] = []

    def take(self, tensor: Tensor, start: int, step: int) -> None:
        """Keep the sampled rows of ``tensor`` (skipped when its layout does not match)."""
        datatype, shape = tensor.datatype, tensor.shape
        if datatype not in BINNABLE or not shape or shape[0] == 0 or math.prod(shape[1:]) != self.columns:
            return
        # Room is left for one request past ``flush_rows``; rows beyond it (a tensor longer than the first) are
        # dropped rather than flushed here, so every flush goes through the monitor and updates the gauges.
        room = self.capacity - self.filled
        dtype = NUMPY_BY_DATATYPE[datatype]
        if self.dtype is None:
            self.dtype = dtype
        rows = shape[0]
        if step == 1 and rows <= room and dtype == self.dtype:
            self.pending += tensor.data
            self.filled += rows
            return
        values = tensor.to_numpy().reshape(rows, self.columns)
        sample = (values[start::step] if step > 1 else values)[:room]
        self.pending += sample.astype(self.dtype, copy=False).tobytes()
        self.filled += len(sample)

    def flush(self) -> None:
        """Bin the kept rows into the histogram."""
        if self.filled:
            # The view over ``pending`` is gone once converted, so the buffer can be emptied and reused.
            rows = np.frombuffer(self.pending, dtype=self.dtype).reshape(self.filled, self.columns).astype(np.float64)
            self.pending.clear()
            self.histogram.add(rows)
            self.filled = 0

    def psi(self) -> np.ndarray:
        """PSI of each column over the rows binned so far."""
        return drift.psi(self.reference, self.histogram.shares())


class _Version:
    """The streams of one (model, version): inputs and outputs by tensor name."""

    __slots__ = ("flushed_at", "inputs", "outputs", "requests")

    def __init__(self, reference: drift.DriftReference, capacity: int, half_life_rows: float, now: float) -> None:
        self.inputs = {name: _Stream(cols, capacity, half_life_rows) for name, cols in reference.inputs.items()}
        self.outputs = {name: _Stream(cols, capacity, half_life_rows) for name, cols in reference.outputs.items()}
        self.requests = 0
        self.flushed_at = now

    def streams(self) -> list[_Stream]:
        return [*self.inputs.values(), *self.outputs.values()]


class DriftMonitor:
    """Rolling histograms of live inputs and outputs per model version, exported as PSI gauges."""

    def __init__(
        self,
        references: ReferenceLookup,
        *,
        sample_rows: int = 64,
        sample_every: int = 1,
        half_life_rows: float = 20000.0,
        min_rows: int = 10000,
        flush_rows: int = FLUSH_ROWS,
        flush_interval_s: float = FLUSH_INTERVAL_S,
        retry_s: float = RETRY_S,
        max_versions: int = MAX_VERSIONS,
        gauge: Gauge = metrics.FEATURE_DRIFT_PSI,
        clock: Clock = time.monotonic,
    ) -> None:
        self.enabled = sample_rows > 0
        self._references = references
        self._sample_rows = sample_rows
        self._sample_every = max(1, sample_every)
        self._half_life_rows = half_life_rows
        self._min_rows = min_rows
        self._capacity = flush_rows + sample_rows
        self._flush_rows = flush_rows
        self._flush_interval_s = flush_interval_s
        self._retry_s = retry_s
        self._max_versions = max_versions
        self._gauge = gauge
        self._clock = clock
        self._versions: OrderedDict[tuple[str, str], _Version] = OrderedDict()
        self._missing: dict[tuple[str, str], float] = {}

    @classmethod
    def from_settings(cls, settings: GatewaySettings, references: ReferenceLookup) -> DriftMonitor:
        """The monitor the settings ask for (``drift_sample_rows`` 0: off)."""
        return cls(
            references,
            sample_rows=settings.drift_sample_rows,
            sample_every=settings.drift_sample_every,
            half_life_rows=settings.drift_half_life_rows,
            min_rows=settings.drift_min_rows,
        )

    def observe(self, model: str, version: str | None, inputs: Sequence[Tensor], outputs: Sequence[Tensor]) -> None:
        """Sample one answered request's input and output tensors (cheap: copies at most ``sample_rows`` rows)."""
        if not self.enabled or version is None:
            return
        key = (model, version)
        tracked = self._versions.get(key)
        if tracked is None:
            tracked = self._track(key)
            if tracked is None:
                return
        else:
            self._versions.move_to_end(key)
        tracked.requests += 1
        if tracked.requests % self._sample_every:
            return
        rows = inputs[0].shape[0] if inputs and inputs[0].shape else 0
        step = -(-rows // self._sample_rows) if rows > self._sample_rows else 1
        start = random.randrange(step) if step > 1 else 0
        full = False
        for tensors, streams in ((inputs, tracked.inputs), (outputs, tracked.outputs)):
            for tensor in tensors:
                stream = streams.get(tensor.name)
                if stream is not None:
                    stream.take(tensor, start, step)
                    full = full or stream.filled >= self._flush_rows
        now = self._clock()
        if full or now - tracked.flushed_at >= self._flush_interval_s:
            self._flush(key, tracked, now)

    def flush(self) -> None:
        """Bin every buffered row and update the gauges now."""
        now = self._clock()
        for key, tracked in self._versions.items():
            self._flush(key, tracked, now)

    def psi(self, model: str, version: str) -> dict[str, float]:
        """Every column's PSI of a tracked version, after a flush (empty when it is not tracked)."""
        tracked = self._versions.get((model, version))
        if tracked is None:
            return {}
        self._flush((model, version), tracked, self._clock())
        values: dict[str, float] = {}
        for stream in tracked.streams():
            values.update(zip(stream.names, stream.psi().tolist(), strict=True))
        return values

    def rows_seen(self, model: str, version: str) -> int:
        """Rows sampled so far for a version, buffered ones included (0 when it is not tracked)."""
        tracked = self._versions.get((model, version))
        streams = tracked.streams() if tracked is not None else []
        return max((s.histogram.rows + s.filled for s in streams), default=0)

    def _track(self, key: tuple[str, str]) -> _Version | None:
        now = self._clock()
        retry_at = self._missing.get(key)
        if retry_at is not None and now < retry_at:
            return None
        raw = self._references(*key)
        reference = None
        if raw is not None:
            try:
                reference = drift.DriftReference.from_dict(raw)
            except drift.BadReference as exc:
                if retry_at is None:
                    log.warning("drift of %s version %s is not monitored: %s", key[0], key[1], exc)
        if reference is None:
            if len(self._missing) >= self._max_versions * 8:
                self._missing.clear()  # bounded: forgetting only means looking a reference up once more
            self._missing[key] = now + self._retry_s
            return None
        self._missing.pop(key, None)
        tracked = _Version(reference, self._capacity, self._half_life_rows, now)
        self._versions[key] = tracked
        while len(self._versions) > self._max_versions:
            old_key, old = self._versions.popitem(last=False)
            self._forget(old_key, old)
        return tracked

    def _flush(self, key: tuple[str, str], tracked: _Version, now: float) -> None:
        tracked.flushed_at = now
        model, version = key
        for stream in tracked.streams():
            stream.flush()
            if stream.histogram.rows < self._min_rows:
                continue
            if not stream.children:
                stream.children = [self._gauge.labels(model, version, name) for name in stream.names]
            for child, value in zip(stream.children, stream.psi().tolist(), strict=True):
                child.set(value)

    def _forget(self, key: tuple[str, str], tracked: _Version) -> None:
        for stream in tracked.streams():
            if stream.children:
                for name in stream.names:
                    with suppress(KeyError):
                        self._gauge.remove(*key, name)
