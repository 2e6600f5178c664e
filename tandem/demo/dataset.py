"""A synthetic yarn store: users, products and logged (user, product, bought?) interactions.

``generate`` is deterministic in its seed. Labels are Bernoulli draws from a hidden logistic model that the
ranker should rediscover: buyers favour their favourite category and well-rated products, avoid products priced
well above their usual basket, heavy buyers buy more, and nobody buys what is out of stock. The base rate is
about 10%.

On disk (``write``/``read``), under ``home/demo/``: ``users.json`` and ``products.json`` (lists of raw records,
as ``tandem.common.features`` defines them) and ``interactions.npz`` (``user_idx``, ``product_idx``,
``labels``). ``read_catalog`` reads only the records: the gateway uses it, so this module imports neither torch
nor mlflow.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from tandem.common.features import CATEGORIES

DEMO_DIR = "demo"
USERS_FILE = "users.json"
PRODUCTS_FILE = "products.json"
INTERACTIONS_FILE = "interactions.npz"

# Population of users.
_MIN_AGE, _MAX_AGE = 18, 80
_MEAN_TENURE_DAYS = 400.0
_MEAN_ORDERS_90D = 2.0
_MEDIAN_ORDER_VALUE = 40.0
_ORDER_VALUE_SPREAD = 0.5  # sigma of log(avg_order_value)
# Favourite categories: yarns are favourites more often than tools (same order as CATEGORIES).
_FAV_WEIGHTS = np.array([5, 4, 2, 1, 3, 1, 1, 1], dtype=np.float64)

# Products: a median price per category, lognormal around it.
_MEDIAN_PRICE = dict(
    wool=12.0, cotton=8.0, alpaca=25.0, mohair=22.0, acrylic=5.0, silk=30.0, needles=10.0, patterns=6.0
)
_PRICE_SPREAD = 0.6
_MIN_PRICE = 0.99
_OUT_OF_STOCK_FRACTION = 0.12
_MEAN_STOCK = 40.0
_BLOCKED_FRACTION = 0.03
_MEAN_RATING, _RATING_SPREAD = 4.0, 0.6
_MIN_RATING, _MAX_RATING = 1.0, 5.0

# The hidden purchase model: logit = sum of these terms (see _purchase_logits).
_BASE_LOGIT = -2.75
_FAV_MATCH_WEIGHT = 1.6
_RATING_WEIGHT = 1.1  # per star above the mean
_PRICE_OVER_BASKET_WEIGHT = 1.4  # per unit of log(price / avg_order_value) above zero
_ORDERS_WEIGHT = 0.12  # per order in the last 90 days
_YOUNG_WOOL_WEIGHT = -0.5  # under-30s buy less wool: an interaction a linear model on raw features misses
_YOUNG_AGE = 30


@dataclass
class DemoDataset:
    """Raw records plus interactions: pair ``i`` is (``users[user_idx[i]]``, ``products[product_idx[i]]``).

    ``user_idx`` and ``product_idx`` are int64, ``labels`` float32 0/1 (1: the user bought the product).
    """

    users: list[dict[str, Any]]
    products: list[dict[str, Any]]
    user_idx: np.ndarray
    product_idx: np.ndarray
    labels: np.ndarray


def generate(seed: int = 7, n_users: int = 2000, n_products: int = 300, n_interactions: int = 60000) -> DemoDataset:
    """A synthetic store and its interaction log, the same for the same arguments."""
    rng = np.random.default_rng(seed)
    users = _generate_users(rng, n_users)
    products = _generate_products(rng, n_products)
    user_idx = rng.integers(0, n_users, size=n_interactions, dtype=np.int64)
    product_idx = rng.integers(0, n_products, size=n_interactions, dtype=np.int64)
    probability = 1.0 / (1.0 + np.exp(-_purchase_logits(users, products, user_idx, product_idx)))
    labels = (rng.random(n_interactions) < probability).astype(np.float32)
    return DemoDataset(users, products, user_idx, product_idx, labels)


def split(dataset: DemoDataset, holdout_fraction: float = 0.2, seed: int = 7) -> tuple[np.ndarray, np.ndarray]:
    """Disjoint sorted interaction indices ``(train_idx, holdout_idx)``, holding out ``holdout_fraction``."""
    if not 0.0 < holdout_fraction < 1.0:
        raise ValueError(f"holdout_fraction must be in (0, 1), got {holdout_fraction}")
    count = len(dataset.labels)
    order = np.random.default_rng(seed).permutation(count)
    n_holdout = round(count * holdout_fraction)
    return np.sort(order[n_holdout:]), np.sort(order[:n_holdout])


def write(dataset: DemoDataset, home: Path) -> None:
    """Write the dataset under ``home/demo/``, replacing what is there."""
    directory = Path(home) / DEMO_DIR
    directory.mkdir(parents=True, exist_ok=True)
    (directory / USERS_FILE).write_bytes(orjson.dumps(dataset.users))
    (directory / PRODUCTS_FILE).write_bytes(orjson.dumps(dataset.products))
    np.savez(
        directory / INTERACTIONS_FILE,
        user_idx=dataset.user_idx,
        product_idx=dataset.product_idx,
        labels=dataset.labels,
    )


def exists(home: Path) -> bool:
    """Whether ``home/demo/`` holds all the dataset's files."""
    directory = Path(home) / DEMO_DIR
    return all((directory / name).is_file() for name in (USERS_FILE, PRODUCTS_FILE, INTERACTIONS_FILE))


def read_catalog(home: Path) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The raw ``(users, products)`` records written by ``write``."""
    directory = Path(home) / DEMO_DIR
    users = orjson.loads((directory / USERS_FILE).read_bytes())
    products = orjson.loads((directory / PRODUCTS_FILE).read_bytes())
    return users, products


def read(home: Path) -> DemoDataset:
    """The whole dataset written by ``write``."""
    users, products = read_catalog(home)
    with np.load(Path(home) / DEMO_DIR / INTERACTIONS_FILE, allow_pickle=False) as arrays:
        return DemoDataset(users, products, arrays["user_idx"], arrays["product_idx"], arrays["labels"])


def _generate_users(rng: np.random.Generator, count: int) -> list[dict[str, Any]]:
    ages = rng.integers(_MIN_AGE, _MAX_AGE + 1, size=count)
    tenures = rng.exponential(_MEAN_TENURE_DAYS, size=count).astype(np.int64)
    # A gamma-distributed appetite per user gives the long tail of heavy buyers real shops have.
    orders = rng.poisson(rng.gamma(shape=1.0, scale=_MEAN_ORDERS_90D, size=count))
    order_values = np.round(_MEDIAN_ORDER_VALUE * rng.lognormal(0.0, _ORDER_VALUE_SPREAD, size=count), 2)
    favourites = rng.choice(len(CATEGORIES), size=count, p=_FAV_WEIGHTS / _FAV_WEIGHTS.sum())
    return [
        {
            "user_id": f"u{i:05d}",
            "age": int(ages[i]),
            "tenure_days": int(tenures[i]),
            "orders_90d": int(orders[i]),
            "avg_order_value": float(order_values[i]),
            "fav_category": CATEGORIES[favourites[i]],
        }
        for i in range(count)
    ]


def _generate_products(rng: np.random.Generator, count: int) -> list[dict[str, Any]]:
    categories = rng.integers(0, len(CATEGORIES), size=count)
    medians = np.array([_MEDIAN_PRICE[name] for name in CATEGORIES])[categories]
    prices = np.round(np.maximum(medians * rng.lognormal(0.0, _PRICE_SPREAD, size=count), _MIN_PRICE), 2)
    in_stock = rng.random(count) >= _OUT_OF_STOCK_FRACTION
    stock = np.where(in_stock, 1 + rng.poisson(_MEAN_STOCK, size=count), 0)
    ratings = np.round(np.clip(rng.normal(_MEAN_RATING, _RATING_SPREAD, size=count), _MIN_RATING, _MAX_RATING), 1)
    blocked = rng.random(count) < _BLOCKED_FRACTION
    return [
        {
            "product_id": f"p{i:04d}",
            "category": CATEGORIES[categories[i]],
            "price": float(prices[i]),
            "stock": int(stock[i]),
            "rating": float(ratings[i]),
            "blocked": bool(blocked[i]),
        }
        for i in range(count)
    ]


def _purchase_logits(
    users: list[dict[str, Any]], products: list[dict[str, Any]], user_idx: np.ndarray, product_idx: np.ndarray
) -> np.ndarray:
    """The hidden model's logit per interaction; ``-inf`` (never bought) when the product is out of stock."""
    age = np.array([u["age"] for u in users], dtype=np.float64)[user_idx]
    orders = np.array([u["orders_90d"] for u in users], dtype=np.float64)[user_idx]
    basket = np.array([u["avg_order_value"] for u in users], dtype=np.float64)[user_idx]
    favourite = np.array([u["fav_category"] for u in users])[user_idx]
    price = np.array([p["price"] for p in products], dtype=np.float64)[product_idx]
    rating = np.array([p["rating"] for p in products], dtype=np.float64)[product_idx]
    stock = np.array([p["stock"] for p in products], dtype=np.int64)[product_idx]
    category = np.array([p["category"] for p in products])[product_idx]

    logits = (
        _BASE_LOGIT
        + _FAV_MATCH_WEIGHT * (favourite == category)
        + _RATING_WEIGHT * (rating - _MEAN_RATING)
        - _PRICE_OVER_BASKET_WEIGHT * np.maximum(0.0, np.log(price / basket))
        + _ORDERS_WEIGHT * orders
        + _YOUNG_WOOL_WEIGHT * ((age < _YOUNG_AGE) & (category == "wool"))
    )
    return np.where(stock > 0, logits, -np.inf)
