"""A model's compute time at batch sizes 1, 2, 4, ..., profiled once when it is loaded, and the batch worth forming.

Batching pays while a batch's rows compute faster together than apart, and on a CPU that stops: once a batch's
activations outgrow the caches, each row costs more. all-MiniLM-L6-v2 on one thread of an AMD EPYC computed
115 rows/s in batches of 8 to 48 and 102 in batches of 64, so a deep queue that filled batches up to
``max_batch_size`` served fewer rows per second than smaller batches would have (Tandem at 64 closed-loop
clients, five interleaved rounds: 96.7 req/s on average with no cap, 104.4 with batches capped at 16).
Clockwork (OSDI '20) profiles every batch size when it loads a model; this does the same within a time budget
and, where the largest size profiled fell ``FALL_OFF`` below the best rows/s, caps the model's batches at the
largest size within ``TOLERANCE`` of the best. A model still gaining at the largest size profiled (a GPU, the
sleeping model, a light model whose cost is per call) gets no cap.

Each size runs ``CALLS_PER_SIZE`` times, in passes over all sizes, and its fastest call counts: another tenant can
only slow a call down, and on a shared machine it does so in spells of seconds (so no size is judged on a first
pass alone). The first pass stops at ``max_rows``, before a size whose calls would not fit in the budget, or at
a size that fails (out of memory): the failure only ends the profile, since the model already passed its
warm-up. A model too slow to profile two sizes within the budget is not profiled.

A cap the profile proposes is then confirmed (``confirm``), past the budget: in most of ``CONFIRM_PAIRS`` pairs of
calls back to back, the capped size and the largest one, the largest must compute at least ``TOLERANCE`` fewer
rows/s. A slow spell slows both calls of a pair alike, where it could slow one size in every pass. Two workers
loading all-MiniLM-L6-v2 at once on two shared cores proposed caps of 4 and 8 rows (``4: 117, 8: 102, 16: 96,
32: 101`` rows/s; ``8: 145, 16: 119``), where batches of 16-32 compute 20-40% more rows/s than 4: a wrong cap
costs far more than a missing one (~10% at 64 rows).

Blocking; runs on the loader thread, beside the live version during a hot swap (its calls then share the device,
and each size's fastest call is what counts).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping

log = logging.getLogger(__name__)

CALLS_PER_SIZE = 3
TOLERANCE = 0.05
"""A size within this share of the best rows/s counts as good as the best."""
FALL_OFF = 0.10
"""A cap is set only when the largest size profiled is at least this share below the best: smaller falls were
within what a slow spell does to a profile here (a profile taken while another worker loaded fell 9% from 4 to
16 rows; the same model's 16 and 32 compute alike)."""
CONFIRM_PAIRS = 3
_GROWTH = 2  # each size twice the last, its call predicted to take twice as long


def profile(
    run: Callable[[int], None],
    max_rows: int,
    budget_s: float,
    first_call_s: float,
    clock: Callable[[], float] = time.perf_counter,
) -> dict[int, float]:
    """Seconds one call of ``run(rows)`` takes at rows 1, 2, 4, ... and ``max_rows`` last, as described above.

    ``first_call_s`` is what one call of a few rows took (the warm-up's). The first pass times one call per
    size and picks the sizes: the next size only while its calls in every pass are predicted to fit in
    ``budget_s``. Nothing is profiled when the first two sizes would not fit, since one size alone says nothing
    about batching. The other passes time the same sizes again, and each size's fastest call counts. Empty also
    when ``budget_s`` is 0.
    """
    seconds: dict[int, float] = {}
    pass_budget_s = budget_s / CALLS_PER_SIZE
    if first_call_s * (1 + _GROWTH) > pass_budget_s:
        return seconds
    started, rows, expected_s = clock(), 1, first_call_s
    while clock() - started + expected_s <= pass_budget_s:
        try:
            seconds[rows] = _timed(run, rows, clock)
        except Exception as exc:  # any failure only ends the profile: the warm-up passed
            log.info("batch profile stops before %d rows: %s: %s", rows, type(exc).__name__, exc)
            break
        if rows >= max_rows:
            break
        rows, expected_s = min(max_rows, rows * _GROWTH), seconds[rows] * _GROWTH
    # Passes, not calls in a row: a slow spell on a shared machine then slows one call of each size, not one size.
    for _ in range(CALLS_PER_SIZE - 1):
        for size in seconds:
            seconds[size] = min(seconds[size], _timed(run, size, clock))
    return seconds


def efficient_rows(seconds: Mapping[int, float]) -> int | None:
    """The largest profiled size within ``TOLERANCE`` of the best rows/s, when the largest size profiled fell at
    least ``FALL_OFF`` below the best; None (no cap) otherwise: the model may still gain past what was profiled.
    """
    rates = {size: size / secs for size, secs in seconds.items() if secs > 0}
    if not rates:
        return None
    best = max(rates.values())
    if rates[max(rates)] > best * (1 - FALL_OFF):
        return None
    return max(size for size, rate in rates.items() if rate >= best * (1 - TOLERANCE))


def confirm(run: Callable[[int], None], cap: int, largest: int, clock: Callable[[], float] = time.perf_counter) -> bool:
    """Whether ``largest`` rows computed at least ``TOLERANCE`` fewer rows/s than ``cap`` rows in most of
    ``CONFIRM_PAIRS`` pairs of calls back to back (in turns, either size first), so that one pair a spell fell
    on does not decide. Stops once most pairs agree; a call that fails confirms nothing."""
    needed = CONFIRM_PAIRS // 2 + 1
    slower = faster = 0
    for pair in range(CONFIRM_PAIRS):
        order = (cap, largest) if pair % 2 == 0 else (largest, cap)
        try:
            timed = {rows: _timed(run, rows, clock) for rows in order}
        except Exception as exc:  # the sizes ran in the profile; a failure now leaves the batches uncapped
            log.info("batch cap not confirmed: %s: %s", type(exc).__name__, exc)
            return False
        if largest / timed[largest] <= cap / timed[cap] * (1 - TOLERANCE):
            slower += 1
        else:
            faster += 1
        if needed in (slower, faster):
            break
    return slower >= needed


def _timed(run: Callable[[int], None], rows: int, clock: Callable[[], float]) -> float:
    started = clock()
    run(rows)
    return clock() - started
