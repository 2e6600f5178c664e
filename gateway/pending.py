"""The table of requests sent to workers and not yet answered.

Register before send; a reply resolves its future; late or duplicate replies (a retried attempt's first leg, a
reply after the caller gave up) are dropped quietly. The table is indexed by worker too, so when a worker dies
every request in flight on it fails at once with ``WorkerLost`` and can be retried elsewhere.

Only the event loop thread touches this table.
"""

from __future__ import annotations

import asyncio
import itertools
import os
from collections.abc import Hashable

from tandem.common.errors import TandemError
from tandem.common.wire import Reply


class WorkerLost(TandemError):
    """The worker holding a request went away before answering; the request may be retried elsewhere."""

    code = "model_unavailable"
    http_status = 503
    expose = True


class PendingReplies:
    """Futures of in-flight requests by attempt id, and the attempt ids held by each worker."""

    def __init__(self) -> None:
        self._futures: dict[str, tuple[asyncio.Future[Reply], Hashable]] = {}
        self._by_worker: dict[Hashable, set[str]] = {}
        # Attempt ids are unique per gateway process; a worker echoes them back.
        prefix = f"{os.getpid():x}."
        self._ids = (f"{prefix}{n:x}" for n in itertools.count())

    def __len__(self) -> int:
        return len(self._futures)

    def register(self, worker: Hashable) -> tuple[str, asyncio.Future[Reply]]:
        """A fresh attempt id and the future its reply will resolve."""
        attempt_id = next(self._ids)
        future: asyncio.Future[Reply] = asyncio.get_running_loop().create_future()
        self._futures[attempt_id] = (future, worker)
        self._by_worker.setdefault(worker, set()).add(attempt_id)
        return attempt_id, future

    def discard(self, attempt_id: str) -> None:
        """Forget an attempt (answered, timed out or abandoned)."""
        entry = self._futures.pop(attempt_id, None)
        if entry is not None:
            held = self._by_worker.get(entry[1])
            if held is not None:
                held.discard(attempt_id)

    def resolve(self, reply: Reply) -> bool:
        """Hand a reply to its waiter; False when nobody waits for it any more."""
        entry = self._futures.get(reply.request_id)
        if entry is None:
            return False
        self.discard(reply.request_id)
        future = entry[0]
        if future.done():
            return False
        future.set_result(reply)
        return True

    def outstanding(self, worker: Hashable) -> int:
        """Requests in flight on ``worker``."""
        return len(self._by_worker.get(worker, ()))

    def fail(self, attempt_id: str, error: BaseException) -> None:
        """Fail one attempt's waiter with ``error`` (no-op when it is no longer waited for)."""
        entry = self._futures.get(attempt_id)
        if entry is None:
            return
        self.discard(attempt_id)
        if not entry[0].done():
            entry[0].set_exception(error)

    def fail_worker(self, worker: Hashable, reason: str) -> int:
        """Fail every request in flight on ``worker`` with ``WorkerLost``; returns how many."""
        attempt_ids = self._by_worker.pop(worker, set())
        for attempt_id in attempt_ids:
            entry = self._futures.pop(attempt_id, None)
            if entry is not None and not entry[0].done():
                entry[0].set_exception(WorkerLost(reason))
        return len(attempt_ids)
