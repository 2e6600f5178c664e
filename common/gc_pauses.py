"""Keeping the garbage collector's work small in long-running serving processes.

A full (generation 2) collection walks every tracked object. A worker that imported torch and MLflow tracks
about 400,000 objects and a gateway about 100,000; measured here, their full collections paused the event loop
for 100-260 ms and 30-95 ms, every few seconds under load, which was the whole p99 of a light model. Nearly all
of those objects are modules, classes and functions made at start-up that live as long as the process, so once
start-up is over they are moved out of the collector's sight (``gc.freeze``): reference counting still frees
them if they ever die, and everything made afterwards (requests, later model versions) is collected as usual.

Young collections are the other cost. One runs each time allocations outnumber frees by 700 since the last,
and a gateway serving 16 requests at once crosses that with the objects its requests hold in flight, not with
garbage: on the ranker it ran 1,430 young collections in 8 s, ~100 us each, 2.0% of its CPU (at 64 clients
3,682, 4.9%), and none found anything to free (requests make no reference cycles). With the threshold at
``YOUNG_THRESHOLD`` none ran in the same 8 s (one at 64 clients). Cyclic garbage still gets collected, after
at most that many more allocations than frees.
"""

from __future__ import annotations

import gc
import logging

log = logging.getLogger("tandem.gc")

YOUNG_THRESHOLD = 10_000
"""Allocations net of frees that start a young collection (Python's default: 700)."""


def freeze_startup_objects() -> int:
    """Collect once, freeze every object alive now, and raise the young generation's threshold to
    ``YOUNG_THRESHOLD``; returns how many objects are frozen."""
    gc.collect()
    gc.freeze()
    frozen = gc.get_freeze_count()
    _, older, oldest = gc.get_threshold()
    gc.set_threshold(YOUNG_THRESHOLD, older, oldest)
    log.info("froze %d start-up objects out of the garbage collector's full collections", frozen)
    return frozen
