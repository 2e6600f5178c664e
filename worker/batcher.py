"""Adaptive batching: a bounded queue per model version and the rule that forms the next batch.

No sockets and no threads here: the server's event loop calls every method. The contract, as invariants:

1. Requests queue per model key ``(name, version)``, in arrival order.
2. There is no wait window. An idle worker's loop is parked in ``wait()``; an arrival wakes it through an
   ``asyncio.Event`` and a lone request forms a batch at once. Requests that arrive while a batch computes
   queue up, so batches grow exactly as fast as load does.
3. ``take()`` forms one batch from one key: requests from the head of its queue, in arrival order, while the
   batch holds at most ``most_rows(key)`` rows: ``max_batch_size``, or less where the key's model computes
   fewer rows per second in larger batches (its load-time profile, ``worker/batch_profile.py``). A request is
   never split and never skipped over to fit a later one; a request larger than that forms a batch alone.
4. Requests whose deadline has passed when ``take()`` reaches them are split off as ``expired``: they are
   answered ``deadline_exceeded`` and never computed. Given a latency prediction ``c(rows)``, ``take()`` never
   computes a request that its batch would make late:

   - A batch holds no more rows than one predicted to take a third of its head request's budget
     (``BATCH_SHARE_OF_BUDGET``, ``batch_rows_for``; always at least the head itself). A request may wait for
     the batch in flight and one queued batch, then run in its own. Nexus (SOSP '19) sizes batches the same
     way with a half (the batch in flight, then its own); a third leaves admission (``worker/server.py``,
     which keeps half of a newcomer's budget in reserve) room for the batch in flight and the newcomer's.
     Without a bound a deep queue forms batches that take longer than the deadline.
   - When the batch so formed would make some of its requests late, it is cut short before the first one
     that breaks the tightest deadline, but only if that costs the requests left out nothing: each still
     makes its deadline after the short batch and then theirs. Otherwise the requests the full batch would
     make late are expired at once ("early drop"). Cutting batches short under overload is a spiral: a
     deep queue's heads have little time left, short batches pay the fixed cost per batch more often, the
     queue falls further behind and the next heads have even less time (measured on MiniLM at 2x overload:
     batches of 1-7 rows with 100 queued, goodput 0.36-0.45 of peak).
   - A request that cannot make its deadline even alone is expired rather than computed in vain.
5. At most ``max_queue_rows`` rows are queued: ``offer()`` refuses a request that would exceed that (the server
   answers ``overloaded`` at once, so callers can retry elsewhere).
6. Fairness across keys: the next batch belongs to the key whose oldest queued request arrived first (round
   robin by age of head). A request waits for the batch in flight, then for the batches of keys whose heads are
   older than it (each may carry its key's younger requests along, up to ``max_batch_size`` rows), then runs.
7. Every offered request leaves exactly once: in a batch, as expired, through ``cancel()`` or ``drain()``.

Latency model. Say one batch of ``n`` rows computes in ``c(n) = a + b*n`` (a fixed launch cost ``a``, a
per-row cost ``b``). Under a steady arrival rate ``λ`` rows/s the next batch holds what arrived during the
previous one, ``n = λ*c(n)``, so ``n = max(1, λa / (1 - λb))``: at low load ``n`` is 1 and no request waits for company;
as ``λ`` approaches ``1/b`` batches grow toward ``max_batch_size`` and amortise ``a``. A request's latency is the
batch in flight, the batches of keys with older heads (invariant 6), and its own batch. Past capacity the queue
fills to ``max_queue_rows`` and the worker sheds load, which bounds queueing delay by about
``c(max_batch_size) * max_queue_rows / max_batch_size``.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections import deque
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

T = TypeVar("T")
ModelKey = tuple[str, str]
Clock = Callable[[], float]
Predict = Callable[[ModelKey, int], "float | None"]

BATCH_SHARE_OF_BUDGET = 1 / 3
"""A batch's predicted compute time may be at most this share of its head request's budget (invariant 4)."""


@dataclass(slots=True, eq=False)
class _Entry(Generic[T]):
    key: ModelKey
    seq: int
    rows: int
    deadline: float
    budget: float
    item: T
    token: Hashable | None
    live: bool = True


@dataclass(slots=True)
class Batch(Generic[T]):
    """What ``take()`` formed: ``items`` to compute together (maybe none) and ``expired`` ones to refuse."""

    key: ModelKey
    items: list[T] = field(default_factory=list)
    rows: int = 0
    expired: list[T] = field(default_factory=list)


class Batcher(Generic[T]):
    """Per-model-version request queues and the batching rule above; the clock is injected for tests."""

    def __init__(
        self,
        max_batch_size: int,
        max_queue_rows: int,
        clock: Clock = time.monotonic,
        batch_cap: Callable[[ModelKey], int | None] | None = None,
    ) -> None:
        """``batch_cap(key)``: most rows worth batching for ``key`` (None: no cap below ``max_batch_size``)."""
        if max_batch_size < 1 or max_queue_rows < 1:
            raise ValueError("max_batch_size and max_queue_rows must be at least 1")
        self.max_batch_size = max_batch_size
        self._batch_cap = batch_cap
        self.max_queue_rows = max_queue_rows
        self._clock = clock
        self._queues: dict[ModelKey, deque[_Entry[T]]] = {}
        self._tokens: dict[Hashable, _Entry[T]] = {}
        self._seq = itertools.count()
        self._rows = 0
        self._rows_by_key: dict[ModelKey, int] = {}
        self._count = 0
        self._arrived = asyncio.Event()

    @property
    def queued_rows(self) -> int:
        """Rows waiting in all queues."""
        return self._rows

    def __len__(self) -> int:
        """Requests waiting in all queues."""
        return self._count

    def offer(self, key: ModelKey, item: T, *, rows: int, deadline: float, token: Hashable | None = None) -> bool:
        """Queue ``item`` (``rows`` rows, due by ``deadline`` on the clock); False when the queue is full.

        ``token``, when given, lets ``cancel(token)`` find the request later.
        """
        if self._rows + rows > self.max_queue_rows:
            return False
        entry = _Entry(key, next(self._seq), rows, deadline, deadline - self._clock(), item, token)
        self._rows_by_key[key] = self._rows_by_key.get(key, 0) + rows
        self._queues.setdefault(key, deque()).append(entry)
        if token is not None:
            self._tokens[token] = entry
        self._rows += rows
        self._count += 1
        self._arrived.set()
        return True

    def cancel(self, token: Hashable) -> T | None:
        """Drop the queued request offered with ``token``; its item, or None if it is no longer queued."""
        entry = self._tokens.get(token)
        if entry is None:
            return None
        self._leave(entry)
        entry.live = False  # removed lazily when it reaches the head of its queue
        return entry.item

    async def wait(self) -> None:
        """Return once at least one request is queued (at once if one already is). Never polls."""
        while not self._count:
            self._arrived.clear()
            await self._arrived.wait()

    def most_rows(self, key: ModelKey) -> int:
        """Most rows a batch of ``key`` holds: ``max_batch_size``, or the key's cap where that is smaller."""
        cap = self._batch_cap(key) if self._batch_cap is not None else None
        return self.max_batch_size if cap is None else max(1, min(cap, self.max_batch_size))

    def rows_by_key(self) -> dict[ModelKey, int]:
        """Rows queued per model key (for the expected wait of a newcomer); do not modify."""
        return self._rows_by_key

    def take(self, predict: Predict | None = None) -> Batch[T] | None:
        """Form the next batch by the rules above; None when nothing is queued.

        ``predict(key, rows)`` gives a batch's expected compute seconds (None: unknown, no constraint).
        """
        heads: dict[ModelKey, _Entry[T]] = {}
        for key, queue in list(self._queues.items()):
            while queue and not queue[0].live:
                queue.popleft()
            if queue:
                heads[key] = queue[0]
            else:
                del self._queues[key]
        if not heads:
            return None
        key = min(heads, key=lambda k: heads[k].seq)
        queue = self._queues[key]
        batch: Batch[T] = Batch(key)
        now = self._clock()
        # batch_rows_for never exceeds most_rows(key)
        most_rows = self.most_rows(key) if predict is None else self.batch_rows_for(key, heads[key].budget, predict)
        candidates: list[_Entry[T]] = []
        rows = 0
        while queue:
            entry = queue[0]
            if not entry.live:
                queue.popleft()
                continue
            if entry.deadline <= now:
                queue.popleft()
                self._leave(entry)
                batch.expired.append(entry.item)
                continue
            if candidates and rows + entry.rows > most_rows:
                break
            queue.popleft()
            candidates.append(entry)
            rows += entry.rows
        run, late = candidates, []
        if predict is not None and candidates:
            run, late = _fit_deadlines(key, candidates, now, predict)
            # Cut short: the rest go back to the head of the queue, in order.
            for entry in reversed(candidates[len(run) + len(late) :]):
                queue.appendleft(entry)
        for entry in late:
            self._leave(entry)
            batch.expired.append(entry.item)
        for entry in run:
            self._leave(entry)
            batch.items.append(entry.item)
            batch.rows += entry.rows
        if not queue:
            del self._queues[key]
        return batch

    def batch_rows_for(self, key: ModelKey, budget_s: float, predict: Predict) -> int:
        """Most rows a batch of ``key`` may hold for a head request with ``budget_s``: the largest size up to
        ``most_rows(key)`` predicted to compute within ``BATCH_SHARE_OF_BUDGET`` of it (at least 1;
        ``most_rows(key)`` while there is no prediction). Assumes the prediction does not fall as rows grow.
        """
        limit = budget_s * BATCH_SHARE_OF_BUDGET
        low, high = 1, self.most_rows(key)
        top = predict(key, high)
        if top is None or top <= limit:
            return high
        while low < high:  # the largest n with predict(n) <= limit, or 1
            middle = (low + high + 1) // 2
            predicted = predict(key, middle)
            if predicted is not None and predicted <= limit:
                low = middle
            else:
                high = middle - 1
        return low

    def drain(self) -> list[T]:
        """Remove and return every queued item, oldest first (used at shutdown to answer them)."""
        entries = sorted((e for q in self._queues.values() for e in q if e.live), key=lambda e: e.seq)
        for entry in entries:
            self._leave(entry)
        self._queues.clear()
        return [entry.item for entry in entries]

    def _leave(self, entry: _Entry[T]) -> None:
        self._rows -= entry.rows
        left = self._rows_by_key[entry.key] - entry.rows
        if left:
            self._rows_by_key[entry.key] = left
        else:
            del self._rows_by_key[entry.key]
        self._count -= 1
        if entry.token is not None and self._tokens.get(entry.token) is entry:
            del self._tokens[entry.token]


def _fit_deadlines(
    key: ModelKey, candidates: list[_Entry[T]], now: float, predict: Predict
) -> tuple[list[_Entry[T]], list[_Entry[T]]]:
    """Which ``candidates`` (in order) to run now and which to expire as late; any others wait (invariant 4).

    Returns ``(run, late)``: all of them when the batch meets every deadline; a prefix and no late ones when
    the batch is cut short; otherwise the requests that make their deadline in the full batch, and the rest
    as late.
    """
    full_s = predict(key, sum(entry.rows for entry in candidates))
    if full_s is None or all(now + full_s <= entry.deadline for entry in candidates):
        return candidates, []
    cut, prefix_rows, tightest = 0, 0, float("inf")
    for entry in candidates:
        predicted = predict(key, prefix_rows + entry.rows)
        if predicted is None or now + predicted > min(tightest, entry.deadline):
            break
        cut, prefix_rows, tightest = cut + 1, prefix_rows + entry.rows, min(tightest, entry.deadline)
    if cut:
        rest = candidates[cut:]
        short_s = predict(key, prefix_rows) or 0.0
        rest_s = predict(key, sum(entry.rows for entry in rest)) or 0.0
        if all(now + short_s + rest_s <= entry.deadline for entry in rest):
            return candidates[:cut], []
    return (
        [entry for entry in candidates if now + full_s <= entry.deadline],
        [entry for entry in candidates if now + full_s > entry.deadline],
    )
