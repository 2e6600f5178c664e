from __future__ import annotations

import gc

from tandem.common.gc_pauses import YOUNG_THRESHOLD, freeze_startup_objects


def test_start_up_objects_leave_the_collectors_sight_and_later_garbage_is_still_collected() -> None:
    thresholds = gc.get_threshold()
    try:
        frozen = freeze_startup_objects()
        assert frozen == gc.get_freeze_count() > 1000
        assert gc.get_threshold() == (YOUNG_THRESHOLD, *thresholds[1:])

        class Node:
            def __init__(self) -> None:
                self.other: Node | None = None

        a, b = Node(), Node()
        a.other, b.other = b, a  # a cycle made after the freeze: only the collector can free it
        del a, b
        assert gc.collect() >= 2
    finally:
        gc.unfreeze()
        gc.set_threshold(*thresholds)
