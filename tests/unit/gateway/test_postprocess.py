"""Business post-processing: sellable filter, category cap, order by score, the step registry and its setting."""

from __future__ import annotations

import sys
import types

import numpy as np
import pytest

from tandem.common.features import CATEGORIES, default_product
from tandem.gateway.postprocess import (
    STEPS,
    Candidate,
    Pipeline,
    Pipelines,
    StepContext,
    by_score,
    register_step,
    resolve_step,
)

DEFAULT = Pipeline.from_names(["sellable", "category_cap"])


def _context(k: int = 10, cap: int = 3, model: str = "ranker") -> StepContext:
    return StepContext(model=model, k=k, user={"user_id": "u1"}, max_per_category=cap)


def _candidate(pid: str, score: float, category: str = "wool", stock: int = 5, blocked: bool = False) -> Candidate:
    record = {"product_id": pid, "category": category, "stock": stock, "blocked": blocked, "price": 1.0}
    return Candidate(pid, score, record)


def _random_candidates(seed: int, count: int = 200) -> list[Candidate]:
    rng = np.random.default_rng(seed)
    return [
        _candidate(
            f"p{i:04d}",
            float(rng.choice([0.1, 0.2, 0.3, rng.random()])),  # many ties on purpose
            CATEGORIES[rng.integers(len(CATEGORIES))],
            int(rng.integers(0, 3)),
            bool(rng.random() < 0.1),
        )
        for i in range(count)
    ]


@pytest.mark.parametrize("seed", range(20))
@pytest.mark.parametrize(("k", "cap"), [(10, 3), (5, 1), (50, 0), (300, 2)])
def test_rules_hold_on_random_candidates(seed: int, k: int, cap: int) -> None:
    candidates = _random_candidates(seed)
    shown = DEFAULT.run(candidates, _context(k=k, cap=cap))
    assert len(shown) <= k
    assert all(c.record["stock"] > 0 and not c.record["blocked"] for c in shown)  # never out of stock or blocked
    keys = [(-c.score, c.product_id) for c in shown]
    assert keys == sorted(keys)  # by score, ties by id
    per_category = {cat: sum(c.record["category"] == cat for c in shown) for cat in CATEGORIES}
    if cap:
        assert max(per_category.values()) <= cap
    # Nothing better was left out: every sellable candidate not shown is worse than the last shown, or was
    # excluded by the cap (its category is full).
    eligible = [c for c in candidates if c.record["stock"] > 0 and not c.record["blocked"]]
    left_out = [c for c in eligible if c not in shown]
    if len(shown) < k:
        assert all(cap and per_category[c.record["category"]] == cap for c in left_out)
    else:
        last = (-shown[-1].score, shown[-1].product_id)
        for c in left_out:
            assert (-c.score, c.product_id) > last or (cap and per_category[c.record["category"]] == cap)


def test_unknown_products_carry_defaults_and_are_dropped() -> None:
    unknown = Candidate("p404", 0.99, default_product("p404"), known=False)
    shown = DEFAULT.run([unknown, _candidate("p1", 0.5)], _context())
    assert [c.product_id for c in shown] == ["p1"]


def test_the_cap_keeps_the_best_of_each_category() -> None:
    candidates = [_candidate(f"w{i}", 1.0 - i / 10, "wool") for i in range(5)] + [_candidate("s1", 0.05, "silk")]
    shown = DEFAULT.run(candidates, _context(k=4, cap=2))
    assert [c.product_id for c in shown] == ["w0", "w1", "s1"]


def test_steps_run_in_order_and_single_rules_exist() -> None:
    candidates = [_candidate("a", 0.9, stock=0), _candidate("b", 0.8, blocked=True), _candidate("c", 0.1)]
    assert [c.product_id for c in Pipeline.from_names(["in_stock"]).run(candidates, _context())] == ["b", "c"]
    assert [c.product_id for c in Pipeline.from_names(["not_blocked"]).run(candidates, _context())] == ["a", "c"]
    assert [c.product_id for c in Pipeline.from_names([]).run(candidates, _context(k=2))] == ["a", "b"]


def test_a_malformed_stock_counts_as_none() -> None:
    odd = Candidate("odd", 1.0, {"stock": None})
    assert Pipeline.from_names(["sellable"]).run([odd], _context()) == []


def test_register_step_and_module_function_names(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("tandem.gateway.postprocess.STEPS", dict(STEPS))

    @register_step("boost_silk")
    def boost_silk(candidates: list[Candidate], context: StepContext) -> list[Candidate]:
        for c in candidates:
            if c.record["category"] == "silk":
                c.score += 1.0
        return by_score(candidates)

    module = types.ModuleType("custom_steps_for_test")
    module.only_two = lambda candidates, context: candidates[:2]  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "custom_steps_for_test", module)

    pipelines = Pipelines.parse("sellable;boosted=sellable,boost_silk,custom_steps_for_test:only_two")
    candidates = [_candidate("w", 0.9, "wool"), _candidate("s", 0.1, "silk"), _candidate("c", 0.5, "cotton")]
    assert [c.product_id for c in pipelines.for_model("ranker").run(candidates, _context())] == ["w", "c", "s"]
    boosted = pipelines.for_model("boosted").run(candidates, _context(model="boosted"))
    assert [c.product_id for c in boosted] == ["s", "w"]
    with pytest.raises(ValueError, match="already registered"):
        register_step("boost_silk")(lambda candidates, context: candidates)


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        ("sellable,no_such_step", "unknown post-processing step 'no_such_step'"),
        ("no_such_module_xyz:step", "cannot load"),
        ("sellable;=category_cap", "names no model"),
    ],
)
def test_bad_settings_fail_when_parsed(setting: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Pipelines.parse(setting)


def test_resolve_rejects_a_non_callable(monkeypatch: pytest.MonkeyPatch) -> None:
    module = types.ModuleType("custom_steps_for_test2")
    module.value = 3  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "custom_steps_for_test2", module)
    with pytest.raises(ValueError, match="not callable"):
        resolve_step("custom_steps_for_test2:value")


def test_an_empty_setting_means_just_top_k() -> None:
    candidates = [_candidate("a", 0.1, stock=0), _candidate("b", 0.2)]
    assert [c.product_id for c in Pipelines.parse("").for_model("ranker").run(candidates, _context())] == ["b", "a"]
