"""B0: the model called in-process by torch, one forward pass per batch, at each batch size.

``batch_table`` times the module at the given batch sizes (rows per call) and reports milliseconds per call and
rows per second; ``throughput_for_mix`` turns that table into the rows per second raw torch would reach on the
same mix of batch sizes a server actually formed (interpolating the per-call time between measured sizes), which
is what a server's saturated throughput is held against. Called in the benchmark's own process, with torch set to
the thread count the workers use.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence

import numpy as np
import torch

WARMUP_CALLS = 3
MIN_CALLS = 3

InputsFor = Callable[[int], list[torch.Tensor]]
"""Builds the module's positional inputs for a batch of ``rows`` rows."""


def time_call_s(module: torch.nn.Module, inputs: list[torch.Tensor], duration_s: float) -> float:
    """Mean seconds per forward pass over ``duration_s`` (and at least ``MIN_CALLS`` calls), after a warm-up."""
    with torch.inference_mode():
        for _ in range(WARMUP_CALLS):
            module(*inputs)
        calls = 0
        began = time.perf_counter()
        while calls < MIN_CALLS or time.perf_counter() - began < duration_s:
            module(*inputs)
            calls += 1
        return (time.perf_counter() - began) / calls


def batch_table(
    module: torch.nn.Module, inputs_for: InputsFor, sizes: Sequence[int], duration_s: float
) -> dict[int, dict[str, float]]:
    """``{rows: {"call_ms", "rows_per_s"}}`` for each batch size in ``sizes``."""
    table = {}
    for rows in sorted(set(sizes)):
        seconds = time_call_s(module, inputs_for(rows), duration_s)
        table[rows] = {"call_ms": round(seconds * 1000, 4), "rows_per_s": round(rows / seconds, 1)}
    return table


def best(table: Mapping[int, Mapping[str, float]]) -> tuple[int, float]:
    """The batch size with the highest rows per second, and that rate."""
    rows = max(table, key=lambda size: table[size]["rows_per_s"])
    return rows, table[rows]["rows_per_s"]


def throughput_for_mix(table: Mapping[int, Mapping[str, float]], batches: Mapping[int, int]) -> float:
    """Rows per second raw torch reaches running ``batches`` (``{rows: count}``), timed from ``table``."""
    sizes = sorted(table)
    call_ms = [table[size]["call_ms"] for size in sizes]
    rows = sum(size * count for size, count in batches.items())
    seconds = sum(float(np.interp(size, sizes, call_ms)) / 1000 * count for size, count in batches.items())
    return rows / seconds if seconds else 0.0
