"""The batching contract of ``tandem.worker.batcher``, driven by a fake clock (no sockets, no threads)."""

from __future__ import annotations

import asyncio

import pytest

from tandem.worker.batcher import Batcher

A = ("a", "1")
B = ("b", "1")
FAR = 1e9  # a deadline that never passes in these tests


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def make(max_batch_size: int = 8, max_queue_rows: int = 64) -> tuple[Batcher[str], FakeClock]:
    clock = FakeClock()
    return Batcher(max_batch_size, max_queue_rows, clock), clock


def offer(batcher: Batcher[str], item: str, rows: int = 1, key: tuple[str, str] = A, deadline: float = FAR) -> None:
    assert batcher.offer(key, item, rows=rows, deadline=deadline, token=item)


def test_lone_request_is_taken_at_once() -> None:
    batcher, _ = make()
    offer(batcher, "r1")

    async def scenario() -> None:
        await asyncio.wait_for(batcher.wait(), timeout=1)  # no wait window: returns at once

    asyncio.run(scenario())
    batch = batcher.take()
    assert batch is not None
    assert (batch.key, batch.items, batch.rows, batch.expired) == (A, ["r1"], 1, [])
    assert batcher.take() is None
    assert batcher.queued_rows == 0
    assert len(batcher) == 0


def test_wait_parks_until_an_arrival_wakes_it() -> None:
    batcher, _ = make()

    async def scenario() -> None:
        waiter = asyncio.create_task(batcher.wait())
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        assert not waiter.done()
        offer(batcher, "r1")
        await asyncio.wait_for(waiter, timeout=1)

    asyncio.run(scenario())


def test_arrivals_during_a_batch_form_the_next_batch() -> None:
    batcher, _ = make()
    offer(batcher, "r1")
    first = batcher.take()
    assert first is not None
    assert first.items == ["r1"]
    # r1 is computing; these arrive meanwhile.
    for item in ("r2", "r3", "r4"):
        offer(batcher, item, rows=2)
    second = batcher.take()
    assert second is not None
    assert (second.items, second.rows) == (["r2", "r3", "r4"], 6)


def test_batch_respects_max_batch_size_in_arrival_order() -> None:
    batcher, _ = make(max_batch_size=4)
    offer(batcher, "three", rows=3)
    offer(batcher, "two", rows=2)
    offer(batcher, "one", rows=1)
    batches = []
    while (batch := batcher.take()) is not None:
        batches.append((batch.items, batch.rows))
    # "one" would fit beside "three", but a batch never skips a request to fit a later one.
    assert batches == [(["three"], 3), (["two", "one"], 3)]


def batch_rows_taken(batcher: Batcher[str]) -> list[int]:
    """Take every batch; their rows, in order."""
    sizes = []
    while (batch := batcher.take()) is not None:
        sizes.append(batch.rows)
    return sizes


def test_full_batches_of_single_rows() -> None:
    batcher, _ = make(max_batch_size=4)
    for index in range(10):
        offer(batcher, f"r{index}")
    assert batch_rows_taken(batcher) == [4, 4, 2]


def test_a_models_batch_cap_bounds_its_batches_below_max_batch_size() -> None:
    caps = {A: 3, B: None}
    batcher: Batcher[str] = Batcher(8, 64, FakeClock(), batch_cap=caps.get)
    assert (batcher.most_rows(A), batcher.most_rows(B)) == (3, 8)
    for index in range(7):
        offer(batcher, f"a{index}")
    assert batch_rows_taken(batcher) == [3, 3, 1]
    # The budget rule works within the cap.
    assert batcher.batch_rows_for(A, 10.0, lambda key, rows: 0.01 * rows) == 3
    assert batcher.batch_rows_for(A, 0.075, lambda key, rows: 0.01 * rows) == 2
    assert Batcher(2, 64, batch_cap=lambda key: 5).most_rows(A) == 2  # never past max_batch_size


def test_oversize_request_runs_alone_and_unsplit() -> None:
    batcher, _ = make(max_batch_size=4, max_queue_rows=64)
    offer(batcher, "small", rows=1)
    offer(batcher, "huge", rows=10)
    offer(batcher, "after", rows=1)
    batches = []
    while (batch := batcher.take()) is not None:
        batches.append((batch.items, batch.rows))
    assert batches == [(["small"], 1), (["huge"], 10), (["after"], 1)]


def test_expired_requests_are_split_off_without_computing() -> None:
    batcher, clock = make()
    offer(batcher, "late", deadline=clock.now + 1)
    offer(batcher, "exact", deadline=clock.now + 2)
    offer(batcher, "fine", deadline=clock.now + 5)
    clock.now += 2
    batch = batcher.take()
    assert batch is not None
    assert batch.items == ["fine"]
    assert batch.expired == ["late", "exact"]  # a deadline equal to now has passed
    assert batcher.queued_rows == 0
    assert len(batcher) == 0


def test_a_batch_may_hold_only_expired_requests() -> None:
    batcher, clock = make()
    offer(batcher, "late", deadline=clock.now)
    batch = batcher.take()
    assert batch is not None
    assert (batch.items, batch.expired) == ([], ["late"])


def test_queue_is_bounded_by_rows() -> None:
    batcher, _ = make(max_batch_size=8, max_queue_rows=4)
    assert batcher.offer(A, "r1", rows=3, deadline=FAR)
    assert not batcher.offer(A, "r2", rows=2, deadline=FAR)
    assert not batcher.offer(B, "r3", rows=2, deadline=FAR)  # the bound is shared by all models
    assert batcher.offer(B, "r4", rows=1, deadline=FAR)
    assert batcher.queued_rows == 4
    assert batcher.take() is not None  # frees r1's rows
    assert batcher.offer(A, "r5", rows=3, deadline=FAR)


def test_models_are_batched_separately() -> None:
    batcher, _ = make()
    offer(batcher, "a1", key=A)
    offer(batcher, "b1", key=B)
    offer(batcher, "a2", key=A)
    first, second = batcher.take(), batcher.take()
    assert first is not None
    assert second is not None
    assert (first.key, first.items) == (A, ["a1", "a2"])
    assert (second.key, second.items) == (B, ["b1"])
    assert batcher.take() is None


def test_oldest_head_goes_first_across_models() -> None:
    batcher, _ = make(max_batch_size=2)
    for index in range(5):
        offer(batcher, f"a{index}", key=A)
    offer(batcher, "b0", key=B)
    order = []
    while (batch := batcher.take()) is not None:
        order.append(batch.items)
        if batch.items == ["a0", "a1"]:
            offer(batcher, "a-late", key=A)  # arrives after b0, rides along with a4, which is older than b0
    assert order == [["a0", "a1"], ["a2", "a3"], ["a4", "a-late"], ["b0"]]


def test_a_busy_model_does_not_starve_another() -> None:
    batcher, _ = make(max_batch_size=4)
    offer(batcher, "a0", key=A)
    offer(batcher, "b0", key=B)
    served = []
    for round_ in range(3):
        batch = batcher.take()
        assert batch is not None
        served.append(batch.key)
        offer(batcher, f"a{round_ + 1}", key=A)  # A keeps arriving while each batch computes
        if batch.key == B:
            offer(batcher, f"b{round_ + 1}", key=B)
    assert served == [A, B, A]


def test_cancel_drops_a_queued_request() -> None:
    batcher, _ = make()
    offer(batcher, "r1", rows=2)
    offer(batcher, "r2", rows=3)
    assert batcher.cancel("r1") == "r1"
    assert batcher.cancel("r1") is None
    assert batcher.cancel("unknown") is None
    assert (batcher.queued_rows, len(batcher)) == (3, 1)
    batch = batcher.take()
    assert batch is not None
    assert batch.items == ["r2"]
    assert batcher.cancel("r2") is None  # already taken


def test_cancelling_everything_leaves_nothing_to_take() -> None:
    batcher, _ = make()
    offer(batcher, "r1")
    batcher.cancel("r1")
    assert batcher.take() is None


def test_drain_returns_every_queued_request_oldest_first() -> None:
    batcher, _ = make()
    offer(batcher, "a1", key=A)
    offer(batcher, "b1", key=B)
    offer(batcher, "a2", key=A)
    batcher.cancel("b1")
    assert batcher.drain() == ["a1", "a2"]
    assert (batcher.queued_rows, len(batcher)) == (0, 0)
    assert batcher.take() is None


def test_limits_must_be_positive() -> None:
    with pytest.raises(ValueError):
        Batcher(0, 10)


def test_take_stops_before_a_request_that_would_make_the_tightest_miss() -> None:
    now = [-0.1]  # the tight request has waited 100 ms of its 125: half its budget still allows 31 rows
    batcher: Batcher[str] = Batcher(max_batch_size=100, max_queue_rows=1000, clock=lambda: now[0])
    batcher.offer(("m", "1"), "tight", rows=1, deadline=0.025)
    now[0] = 0.0
    batcher.offer(("m", "1"), "loose-a", rows=10, deadline=1.0)
    batcher.offer(("m", "1"), "loose-b", rows=10, deadline=1.0)

    def predict(key: tuple[str, str], rows: int) -> float:
        return 0.002 * rows  # 1 row: 2 ms; 11 rows: 22 ms; 21 rows: 42 ms

    first = batcher.take(predict)
    assert first is not None and first.items == ["tight", "loose-a"] and first.expired == []
    second = batcher.take(predict)
    assert second is not None and second.items == ["loose-b"]


def test_a_batch_holds_no_more_than_a_third_of_its_heads_budget_can_compute() -> None:
    now = [0.0]
    batcher: Batcher[str] = Batcher(max_batch_size=256, max_queue_rows=1000, clock=lambda: now[0])
    for index in range(100):
        batcher.offer(("m", "1"), f"r{index}", rows=1, deadline=1.0)  # a 1 s budget each

    def predict(key: tuple[str, str], rows: int) -> float:
        return 0.05 + 0.01 * rows  # a third of a second holds 28 rows

    first = batcher.take(predict)
    assert first is not None and len(first.items) == 28 and first.expired == []
    now[0] = 0.4
    second = batcher.take(predict)  # the rest still make their deadline in a batch of the same size
    assert second is not None and len(second.items) == 28 and second.expired == []


def test_batch_rows_for_a_budget() -> None:
    batcher: Batcher[str] = Batcher(max_batch_size=64, max_queue_rows=1000)

    def predict(key: tuple[str, str], rows: int) -> float:
        return 0.01 * rows

    assert batcher.batch_rows_for(A, 0.61, predict) == 20
    assert batcher.batch_rows_for(A, 10.0, predict) == 64  # never past max_batch_size
    assert batcher.batch_rows_for(A, 0.001, predict) == 1  # a request always fits in a batch of its own
    assert batcher.batch_rows_for(A, 0.001, lambda key, rows: None) == 64  # nothing learned yet: no limit


def test_take_expires_a_request_that_cannot_make_its_deadline_even_alone() -> None:
    batcher: Batcher[str] = Batcher(max_batch_size=100, max_queue_rows=1000, clock=lambda: 0.0)
    batcher.offer(("m", "1"), "hopeless", rows=1, deadline=0.001)
    batcher.offer(("m", "1"), "fine", rows=1, deadline=1.0)
    batch = batcher.take(lambda key, rows: 0.01)
    assert batch is not None and batch.expired == ["hopeless"] and batch.items == []
    batch = batcher.take(lambda key, rows: 0.01)  # a batch is sized by its head: the next one, "fine"
    assert batch is not None and batch.expired == [] and batch.items == ["fine"]


def test_take_without_a_prediction_ignores_compute_time() -> None:
    batcher: Batcher[str] = Batcher(max_batch_size=100, max_queue_rows=1000, clock=lambda: 0.0)
    batcher.offer(("m", "1"), "a", rows=1, deadline=0.001)
    batch = batcher.take(lambda key, rows: None)
    assert batch is not None and batch.items == ["a"]


def test_rows_by_key_follows_offers_and_takes() -> None:
    batcher: Batcher[str] = Batcher(max_batch_size=4, max_queue_rows=1000, clock=lambda: 0.0)
    batcher.offer(("a", "1"), "x", rows=3, deadline=1.0)
    batcher.offer(("a", "1"), "y", rows=3, deadline=1.0, token="y")
    batcher.offer(("b", "1"), "z", rows=2, deadline=1.0)
    assert batcher.rows_by_key() == {("a", "1"): 6, ("b", "1"): 2}
    batcher.cancel("y")
    batcher.take()
    assert batcher.rows_by_key() == {("b", "1"): 2}


def test_a_cut_that_would_make_the_rest_late_expires_the_late_instead() -> None:
    """Under overload the heads have little time left; cutting batches short for them is a spiral."""
    now = [0.0]
    batcher: Batcher[str] = Batcher(max_batch_size=100, max_queue_rows=1000, clock=lambda: now[0])
    for index in range(10):
        batcher.offer(("m", "1"), f"old{index}", rows=1, deadline=1.0)
    for index in range(30):
        batcher.offer(("m", "1"), f"new{index}", rows=1, deadline=2.0)
    now[0] = 0.95  # the old ones have 50 ms left; the new ones 1,050 ms

    def predict(key: tuple[str, str], rows: int) -> float:
        return 0.03 + 0.01 * rows  # 1 row: 40 ms; 40 rows: 430 ms

    batch = batcher.take(predict)
    assert batch is not None
    assert batch.expired == [f"old{index}" for index in range(10)]  # not a batch of one, then the rest late
    assert batch.items == [f"new{index}" for index in range(20)]  # 30 rows by the old head's budget, less 10
    assert len(batcher) == 10


def test_a_cut_short_batch_puts_the_rest_back_in_order() -> None:
    now = [-0.2]
    batcher: Batcher[str] = Batcher(max_batch_size=100, max_queue_rows=1000, clock=lambda: now[0])
    batcher.offer(("m", "1"), "tight", rows=1, deadline=0.02)
    now[0] = 0.0
    for index in range(5):
        batcher.offer(("m", "1"), f"loose{index}", rows=2, deadline=1.0)
    first = batcher.take(lambda key, rows: 0.002 * rows)
    assert first is not None and first.items == ["tight", "loose0", "loose1", "loose2", "loose3"]
    second = batcher.take(lambda key, rows: 0.002 * rows)
    assert second is not None and second.items == ["loose4"] and second.expired == []
