"""asyncio's selector event loop, running each turn's I/O callbacks before the callbacks queued earlier.

asyncio runs, in each turn of its loop, every callback that was ready when the turn began, first in, first out:
callbacks queued during the last turn (task steps: requests admitted, workers' replies to answer), then those of
the I/O that ``select`` just reported (a connection's new bytes). Under overload a turn holds many requests' task
steps, and a request that is to be refused, answered at once when its head is parsed in the protocol
(``gateway/http_protocol.py``), waited for all of them first. Here the I/O callbacks run first in their turn, and
the task steps queued earlier after them, so a refusal waits only for the turn in progress.

Nothing runs later than a turn it would have run in: the turn still runs every callback ready at its start, and
timers last, as before. Only the order inside a turn changes, which asyncio leaves unspecified (uvloop runs I/O
callbacks as libuv reports them, in yet another order). The reordering uses two details of CPython's
``BaseSelectorEventLoop`` that are not public API, ``_process_events`` and the ``_ready`` deque;
``tests/unit/gateway/test_io_first_loop.py`` checks them on every Python the suite runs on.
"""

from __future__ import annotations

import asyncio
from typing import Any

LOOP_FACTORY = "tandem.gateway.io_first_loop:IOFirstEventLoop"
"""The import string uvicorn's ``loop`` setting takes for this loop (a custom loop factory)."""


class IOFirstEventLoop(asyncio.SelectorEventLoop):
    """A selector event loop whose turns run the I/O callbacks ``select`` reported before the earlier queue."""

    def _process_events(self, event_list: list[tuple[Any, int]]) -> None:
        ready = self._ready  # type: ignore[attr-defined]
        queued = len(ready)
        super()._process_events(event_list)  # type: ignore[misc]
        added = len(ready) - queued
        if added and queued:
            ready.rotate(added)  # the handles just appended move, in their order, ahead of the earlier ones
