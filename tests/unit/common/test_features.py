"""The shared feature definition: layout, defaults, and training/serving rows equal bit for bit."""

from __future__ import annotations

import numpy as np
import pytest

from tandem.common.features import (
    CATEGORIES,
    DEFAULT_PRODUCT,
    DEFAULT_USER,
    FEATURE_NAMES,
    NUM_FEATURES,
    build_rows,
    build_training_rows,
    default_product,
    default_user,
)


def _random_catalog(rng: np.random.Generator, n_users: int = 50, n_products: int = 80):
    # Awkward values on purpose: unknown categories, zero stock, awkward floats, missing fields, defaults.
    names = [*CATEGORIES, "unknown", ""]
    users = [
        {
            "user_id": f"u{i:05d}",
            "age": int(rng.integers(18, 90)),
            "tenure_days": int(rng.integers(0, 5000)),
            "orders_90d": int(rng.poisson(2)),
            "avg_order_value": float(rng.lognormal(3.5, 0.8)),
            "fav_category": names[rng.integers(len(names))],
        }
        for i in range(n_users)
    ]
    products = [
        {
            "product_id": f"p{i:04d}",
            "category": names[rng.integers(len(names))],
            "price": float(rng.lognormal(2.5, 1.0)),
            "stock": int(rng.integers(0, 3)) * int(rng.integers(0, 500)),
            "rating": float(rng.uniform(1, 5)),
            "blocked": bool(rng.random() < 0.1),
        }
        for i in range(n_products)
    ]
    users.append(default_user("u99999"))
    products.append(default_product("p9999"))
    users.append({"user_id": "u88888", "age": 40})  # the rest falls back to DEFAULT_USER
    products.append({"product_id": "p8888", "category": "silk"})
    return users, products


def test_layout_and_dtype():
    rng = np.random.default_rng(0)
    users, products = _random_catalog(rng)
    rows = build_rows(users[0], products)
    assert len(FEATURE_NAMES) == NUM_FEATURES == len(set(FEATURE_NAMES))
    assert rows.shape == (len(products), NUM_FEATURES)
    assert rows.dtype == np.float32
    assert rows.flags.c_contiguous
    assert np.isfinite(rows).all()
    assert build_rows(users[0], []).shape == (0, NUM_FEATURES)


def test_defaults_are_complete_records():
    assert set(DEFAULT_USER) == {"user_id", "age", "tenure_days", "orders_90d", "avg_order_value", "fav_category"}
    assert set(DEFAULT_PRODUCT) == {"product_id", "category", "price", "stock", "rating", "blocked"}
    assert default_user("u00001")["user_id"] == "u00001"
    assert default_product("p0001")["product_id"] == "p0001"
    with pytest.raises(TypeError):
        DEFAULT_USER["age"] = 1  # type: ignore[index]


def test_missing_fields_take_defaults():
    partial = build_rows({"user_id": "u1"}, [{"product_id": "p1"}])
    full = build_rows(default_user("u1"), [default_product("p1")])
    assert partial.tobytes() == full.tobytes()
    in_stock = FEATURE_NAMES.index("in_stock")
    assert full[0, in_stock] == 0.0  # an unknown product is unsellable


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_training_rows_equal_serving_rows_bit_for_bit(seed: int):
    rng = np.random.default_rng(seed)
    users, products = _random_catalog(rng)
    user_idx = rng.integers(0, len(users), size=3000)
    product_idx = rng.integers(0, len(products), size=3000)
    training = build_training_rows(users, products, user_idx, product_idx)

    # Serving sees one user with a candidate list; check every user that appears, with its candidates in order.
    for user in np.unique(user_idx):
        mask = user_idx == user
        serving = build_rows(users[user], [products[p] for p in product_idx[mask]])
        assert serving.tobytes() == np.ascontiguousarray(training[mask]).tobytes()
    # And a single pair on its own.
    single = build_rows(users[user_idx[7]], [products[product_idx[7]]])
    assert single.tobytes() == training[7:8].tobytes()


def test_one_hot_and_favourite_match():
    user = {**default_user("u1"), "fav_category": "alpaca"}
    products = [{**default_product(f"p{i}"), "category": name} for i, name in enumerate([*CATEGORIES, "yak"])]
    rows = build_rows(user, products)
    one_hot = rows[:, [FEATURE_NAMES.index(f"category_{name}") for name in CATEGORIES]]
    assert np.array_equal(one_hot[: len(CATEGORIES)], np.eye(len(CATEGORIES), dtype=np.float32))
    assert not one_hot[-1].any()  # an unknown category sets no bit
    match = rows[:, FEATURE_NAMES.index("fav_category_match")]
    assert match.tolist() == [float(name == "alpaca") for name in [*CATEGORIES, "yak"]]
    # No favourite never matches a product without a category.
    assert build_rows(default_user("u2"), [default_product("p2")])[0, FEATURE_NAMES.index("fav_category_match")] == 0


def test_numeric_features():
    user = {"user_id": "u1", "age": 50, "tenure_days": 99, "orders_90d": 5, "avg_order_value": 19.0, "fav_category": ""}
    product = {"product_id": "p1", "category": "wool", "price": 9.0, "stock": 0, "rating": 4.0, "blocked": False}
    row = dict(zip(FEATURE_NAMES, build_rows(user, [product])[0].tolist(), strict=True))
    assert row["log_price"] == pytest.approx(np.log(10.0))
    assert row["rating"] == pytest.approx(0.8)
    assert row["in_stock"] == 0.0 and row["log_stock"] == 0.0
    assert row["age"] == pytest.approx(0.5)
    assert row["log_tenure_days"] == pytest.approx(np.log(100.0))
    assert row["orders_90d"] == pytest.approx(0.5)
    assert row["log_avg_order_value"] == pytest.approx(np.log(20.0))
    assert row["log_price_to_aov"] == pytest.approx(np.log(10.0) - np.log(20.0))


def test_negative_amounts_do_not_make_nan():
    user = {**default_user("u1"), "tenure_days": -5, "avg_order_value": -1.0}
    product = {**default_product("p1"), "price": -3.0, "stock": -2}
    assert np.isfinite(build_rows(user, [product])).all()


def test_mismatched_index_arrays_are_rejected():
    with pytest.raises(ValueError):
        build_training_rows([default_user("u")], [default_product("p")], np.zeros(3), np.zeros(2))
