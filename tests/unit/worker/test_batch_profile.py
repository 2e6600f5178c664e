"""The load-time batch profile: which sizes it times, within what budget, and which cap it draws from them."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from tandem.worker.batch_profile import (
    CALLS_PER_SIZE,
    CONFIRM_PAIRS,
    FALL_OFF,
    TOLERANCE,
    confirm,
    efficient_rows,
    profile,
)


class SimulatedModel:
    """A model whose call of ``rows`` rows advances a fake clock by ``cost(rows)`` seconds."""

    def __init__(self, cost: Callable[[int], float]) -> None:
        self.cost, self.now, self.calls = cost, 0.0, []

    def clock(self) -> float:
        return self.now

    def run(self, rows: int) -> None:
        self.calls.append(rows)
        self.now += self.cost(rows)


def past_the_caches(rows: int) -> float:
    """1 ms a call plus 1 ms a row up to 32 rows; each row past 32 costs 3 ms (activations out of cache)."""
    return 0.001 + 0.001 * min(rows, 32) + 0.003 * max(0, rows - 32)


def per_call_cost(rows: int) -> float:
    """A light model or a GPU: the call dominates, so rows/s rises with every size."""
    return 0.002 + 0.00001 * rows


def test_a_model_slower_per_row_past_a_size_is_capped_there() -> None:
    model = SimulatedModel(past_the_caches)
    seconds = profile(model.run, 256, budget_s=10.0, first_call_s=0.002, clock=model.clock)
    assert list(seconds) == [1, 2, 4, 8, 16, 32, 64, 128, 256]
    assert seconds[32] == pytest.approx(past_the_caches(32))
    assert efficient_rows(seconds) == 32


def test_a_model_still_gaining_at_max_rows_is_not_capped_and_max_rows_is_the_last_size() -> None:
    model = SimulatedModel(per_call_cost)
    seconds = profile(model.run, 100, budget_s=10.0, first_call_s=0.002, clock=model.clock)
    assert list(seconds) == [1, 2, 4, 8, 16, 32, 64, 100]
    assert model.calls.count(100) == CALLS_PER_SIZE
    assert efficient_rows(seconds) is None


def test_a_slow_spell_during_the_first_pass_does_not_decide_the_cap() -> None:
    model = SimulatedModel(past_the_caches)
    spell = range(3, 6)  # calls at 8, 16 and 32 rows in the first pass run at half speed

    def disturbed(rows: int) -> float:
        return past_the_caches(rows) * (2 if len(model.calls) - 1 in spell else 1)

    model.cost = disturbed
    seconds = profile(model.run, 256, budget_s=10.0, first_call_s=0.002, clock=model.clock)
    assert model.calls[:10] == [1, 2, 4, 8, 16, 32, 64, 128, 256, 1]  # one call per size, then passes over them
    assert model.calls.count(32) == CALLS_PER_SIZE
    assert seconds[16] == pytest.approx(past_the_caches(16))
    assert efficient_rows(seconds) == 32


def test_the_budget_ends_the_profile_before_a_size_that_would_not_fit() -> None:
    model = SimulatedModel(lambda rows: 0.01 * rows)
    seconds = profile(model.run, 256, budget_s=0.9, first_call_s=0.01, clock=model.clock)
    # Sizes 1 to 8 take 0.45 s; 16 rows would take 3 x 0.16 s more, past the 0.9 s budget.
    assert list(seconds) == [1, 2, 4, 8]
    assert model.now <= 0.9
    assert efficient_rows(seconds) is None  # still level at the largest size profiled: no evidence for a cap


def test_a_model_too_slow_for_two_sizes_is_not_profiled() -> None:
    model = SimulatedModel(lambda rows: 0.5)
    assert profile(model.run, 256, budget_s=3.0, first_call_s=0.5, clock=model.clock) == {}
    assert model.calls == []


def test_no_budget_no_profile() -> None:
    model = SimulatedModel(per_call_cost)
    assert profile(model.run, 256, budget_s=0.0, first_call_s=0.002, clock=model.clock) == {}
    assert model.calls == []


def test_a_failing_size_ends_the_profile_and_keeps_the_sizes_before_it() -> None:
    def out_of_memory_past_16(rows: int) -> float:
        if rows > 16:
            raise RuntimeError("CUDA out of memory")
        return per_call_cost(rows)

    model = SimulatedModel(out_of_memory_past_16)
    seconds = profile(model.run, 256, budget_s=10.0, first_call_s=0.002, clock=model.clock)
    assert list(seconds) == [1, 2, 4, 8, 16]


@pytest.mark.parametrize(
    ("rows_per_s", "cap"),
    [
        ({1: 50, 8: 100, 16: 110, 32: 108, 64: 90}, 32),  # 32 is within the tolerance of 16; 64 is not
        ({1: 50, 8: 100, 16: 110, 32: 90, 64: 80}, 16),
        ({1: 50, 8: 100, 16: 110, 32: 112}, None),  # the largest is the best
        ({1: 50, 8: 100, 16: 110, 32: 110 * (1 - TOLERANCE / 2)}, None),  # level at the largest
        ({1: 50, 4: 100, 8: 97, 16: 100 * (1 - FALL_OFF / 2)}, None),  # a fall a slow spell could explain
        ({1: 50}, None),
        ({}, None),
    ],
)
def test_the_cap_is_the_largest_size_near_the_best_when_the_largest_fell_clearly_below_it(
    rows_per_s: dict[int, float], cap: int | None
) -> None:
    seconds = {rows: rows / rate for rows, rate in rows_per_s.items()}
    assert efficient_rows(seconds) == cap


def test_a_real_fall_off_is_confirmed_by_paired_calls_in_turns() -> None:
    model = SimulatedModel(past_the_caches)
    assert confirm(model.run, 32, 256, clock=model.clock)
    assert CONFIRM_PAIRS == 3
    assert model.calls == [32, 256, 256, 32]  # two pairs of three agree: the third is not needed


def test_a_cap_proposed_by_a_slow_spell_is_not_confirmed() -> None:
    # Two workers profiling at once: the larger sizes ran in slow spells, and the profile proposed 4 rows.
    model = SimulatedModel(per_call_cost)
    seconds = {1: 1 / 41, 2: 2 / 63, 4: 4 / 117, 8: 8 / 102, 16: 16 / 96, 32: 32 / 101}
    assert efficient_rows(seconds) == 4
    assert not confirm(model.run, 4, 32, clock=model.clock)
    assert model.calls == [4, 32, 32, 4]


def test_a_spell_that_slows_both_calls_of_a_pair_leaves_the_verdict_alone() -> None:
    model = SimulatedModel(past_the_caches)

    def spell_on_the_second_pair(rows: int) -> float:
        return past_the_caches(rows) * (3 if len(model.calls) in (3, 4) else 1)

    model.cost = spell_on_the_second_pair
    assert confirm(model.run, 32, 256, clock=model.clock)


def test_one_pair_a_spell_fell_on_does_not_decide() -> None:
    model = SimulatedModel(past_the_caches)

    def spell_on_the_first_call(rows: int) -> float:
        return past_the_caches(rows) * (4 if len(model.calls) == 1 else 1)  # 32 rows at a quarter speed

    model.cost = spell_on_the_first_call
    assert confirm(model.run, 32, 256, clock=model.clock)
    assert model.calls == [32, 256, 256, 32, 32, 256]  # the first pair disagreed: the third decided


def test_a_call_that_fails_while_confirming_leaves_the_batches_uncapped() -> None:
    def run(rows: int) -> None:
        if rows > 16:
            raise MemoryError("out of memory")

    assert not confirm(run, 16, 64)
