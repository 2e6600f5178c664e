"""The running example's features: one definition shared by training and serving.

A yarn store ranks products for a user. The gateway fetches the user's and the candidate products' *raw
records* and calls ``build_rows``; training calls ``build_training_rows`` on logged (user, product) pairs. Both
go through the same private function over column arrays, so a pair gets bit-for-bit the same row in either
place (no training/serving skew). This module needs numpy only: the gateway imports it and never torch.

Raw records (plain dicts, as JSON gives them)::

    user:    user_id "u00042", age int, tenure_days int, orders_90d int, avg_order_value float, fav_category str
    product: product_id "p0042", category str, price float, stock int, rating float in 1..5, blocked bool

A field missing from a record takes its value from ``DEFAULT_USER``/``DEFAULT_PRODUCT``; a category outside
``CATEGORIES`` sets no one-hot bit and never matches a favourite. ``blocked`` is not a feature: it is a
business rule the gateway applies after scoring.

Row layout (``FEATURE_NAMES``), float32, C-contiguous, ``[n_pairs, NUM_FEATURES]``: product features
(log price, rating / 5, in stock, log stock), user features (age / 100, log tenure, orders / 10, log average
order value), pair features (favourite category matches, log price minus log average order value), then the
product category one-hot. Counts and amounts are clipped at 0 before ``log1p``, so bad data cannot make NaN.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from types import MappingProxyType
from typing import Any

import numpy as np

CATEGORIES: tuple[str, ...] = (
    "wool",
    "cotton",
    "alpaca",
    "mohair",
    "acrylic",
    "silk",
    "needles",
    "patterns",
)
_CATEGORY_CODE: dict[str, int] = {name: code for code, name in enumerate(CATEGORIES)}
_NO_CATEGORY = -1

# Defaults for an entity the feature store does not know. They describe a *new* user (no history, a typical
# basket) and an *unsellable* product (out of stock, so the ranker scores it near zero): ranking something we
# cannot describe above real products would be worse than not ranking it at all.
DEFAULT_USER: Mapping[str, Any] = MappingProxyType(
    {
        "user_id": "",
        "age": 35,
        "tenure_days": 0,
        "orders_90d": 0,
        "avg_order_value": 40.0,
        "fav_category": "",
    }
)
DEFAULT_PRODUCT: Mapping[str, Any] = MappingProxyType(
    {
        "product_id": "",
        "category": "",
        "price": 20.0,
        "stock": 0,
        "rating": 3.0,
        "blocked": False,
    }
)

_PRODUCT_FEATURES = ("log_price", "rating", "in_stock", "log_stock")
_USER_FEATURES = ("age", "log_tenure_days", "orders_90d", "log_avg_order_value")
_PAIR_FEATURES = ("fav_category_match", "log_price_to_aov")
FEATURE_NAMES: tuple[str, ...] = (
    *_PRODUCT_FEATURES,
    *_USER_FEATURES,
    *_PAIR_FEATURES,
    *(f"category_{name}" for name in CATEGORIES),
)
NUM_FEATURES = len(FEATURE_NAMES)

_MAX_RATING = 5.0
_AGE_SCALE = 100.0
_ORDERS_SCALE = 10.0

# Column offsets into a row, derived from the layout above.
_USER_START = len(_PRODUCT_FEATURES)
_PAIR_START = _USER_START + len(_USER_FEATURES)
_ONE_HOT_START = _PAIR_START + len(_PAIR_FEATURES)

FEATURE_DTYPE = np.dtype(np.float32)


def default_user(user_id: str) -> dict[str, Any]:
    """A fresh raw record for an unknown user (``DEFAULT_USER`` with its id filled in)."""
    return {**DEFAULT_USER, "user_id": user_id}


def default_product(product_id: str) -> dict[str, Any]:
    """A fresh raw record for an unknown product (``DEFAULT_PRODUCT`` with its id filled in)."""
    return {**DEFAULT_PRODUCT, "product_id": product_id}


def build_rows(user: Mapping[str, Any], products: Sequence[Mapping[str, Any]]) -> np.ndarray:
    """Feature rows for one user against each product, in order: float32 ``[len(products), NUM_FEATURES]``."""
    count = len(products)
    return _pair_rows(
        _user_columns([user]),
        _product_columns(products),
        np.zeros(count, dtype=np.intp),
        np.arange(count, dtype=np.intp),
    )


def build_training_rows(
    users: Sequence[Mapping[str, Any]],
    products: Sequence[Mapping[str, Any]],
    user_idx: np.ndarray,
    product_idx: np.ndarray,
) -> np.ndarray:
    """Feature rows for the pairs ``(users[user_idx[i]], products[product_idx[i]])``.

    Row ``i`` equals, byte for byte, the row ``build_rows(users[user_idx[i]], [products[product_idx[i]]])``.
    """
    user_idx = np.asarray(user_idx, dtype=np.intp)
    product_idx = np.asarray(product_idx, dtype=np.intp)
    if user_idx.shape != product_idx.shape or user_idx.ndim != 1:
        raise ValueError(
            f"user_idx and product_idx must be 1-D and equally long, got {user_idx.shape} and {product_idx.shape}"
        )
    return _pair_rows(_user_columns(users), _product_columns(products), user_idx, product_idx)


def _column(records: Sequence[Mapping[str, Any]], key: str, defaults: Mapping[str, Any]) -> np.ndarray:
    default = defaults[key]
    return np.array([record.get(key, default) for record in records], dtype=np.float64)


def _category_codes(records: Sequence[Mapping[str, Any]], key: str, defaults: Mapping[str, Any]) -> np.ndarray:
    default = defaults[key]
    codes = [_CATEGORY_CODE.get(record.get(key, default), _NO_CATEGORY) for record in records]
    return np.array(codes, dtype=np.intp)


def _user_columns(users: Sequence[Mapping[str, Any]]) -> tuple[np.ndarray, np.ndarray]:
    """Per-user features ``[n_users, len(_USER_FEATURES)]`` plus each user's favourite category code."""
    features = np.empty((len(users), len(_USER_FEATURES)), dtype=FEATURE_DTYPE)
    # Computed in float64 and rounded once to float32, for both callers alike: one rounding, same inputs.
    features[:, 0] = _column(users, "age", DEFAULT_USER) / _AGE_SCALE
    features[:, 1] = np.log1p(np.maximum(_column(users, "tenure_days", DEFAULT_USER), 0.0))
    features[:, 2] = _column(users, "orders_90d", DEFAULT_USER) / _ORDERS_SCALE
    features[:, 3] = np.log1p(np.maximum(_column(users, "avg_order_value", DEFAULT_USER), 0.0))
    return features, _category_codes(users, "fav_category", DEFAULT_USER)


def _product_columns(products: Sequence[Mapping[str, Any]]) -> tuple[np.ndarray, np.ndarray]:
    """Per-product features ``[n_products, len(_PRODUCT_FEATURES)]`` plus each product's category code."""
    features = np.empty((len(products), len(_PRODUCT_FEATURES)), dtype=FEATURE_DTYPE)
    stock = np.maximum(_column(products, "stock", DEFAULT_PRODUCT), 0.0)
    features[:, 0] = np.log1p(np.maximum(_column(products, "price", DEFAULT_PRODUCT), 0.0))
    features[:, 1] = _column(products, "rating", DEFAULT_PRODUCT) / _MAX_RATING
    features[:, 2] = stock > 0.0
    features[:, 3] = np.log1p(stock)
    return features, _category_codes(products, "category", DEFAULT_PRODUCT)


def _pair_rows(
    users: tuple[np.ndarray, np.ndarray],
    products: tuple[np.ndarray, np.ndarray],
    user_idx: np.ndarray,
    product_idx: np.ndarray,
) -> np.ndarray:
    """Assemble rows from per-entity columns: the one place a row's layout is decided.

    Entity features are computed once per entity (on contiguous arrays) and gathered; pair features use only
    gathered float32 values and exact operations, so a pair's row does not depend on what else is in the batch.
    """
    user_features, fav_codes = users
    product_features, category_codes = products
    rows = np.zeros((len(user_idx), NUM_FEATURES), dtype=FEATURE_DTYPE)
    rows[:, :_USER_START] = product_features[product_idx]
    rows[:, _USER_START:_PAIR_START] = user_features[user_idx]
    categories = category_codes[product_idx]
    rows[:, _PAIR_START] = (fav_codes[user_idx] == categories) & (categories != _NO_CATEGORY)
    # float32 subtraction of two gathered float32 values: correctly rounded, so identical on every path.
    rows[:, _PAIR_START + 1] = rows[:, 0] - rows[:, _USER_START + 3]
    known = np.flatnonzero(categories != _NO_CATEGORY)
    rows[known, _ONE_HOT_START + categories[known]] = 1.0
    return rows
