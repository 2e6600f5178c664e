"""The in-memory feature store: records as given, unknown entities as None, counters."""

from __future__ import annotations

import asyncio
from pathlib import Path

from tandem.gateway.feature_store import FAILURE_TIMEOUT, FeatureLookup, FeatureStats, InMemoryFeatureStore

USERS = [{"user_id": "u1", "age": 30}]
PRODUCTS = [{"product_id": "p1", "stock": 2}, {"product_id": "p2", "stock": 0}]


def test_lookup_returns_records_in_order_and_counts_unknowns() -> None:
    store = InMemoryFeatureStore(USERS, PRODUCTS)
    found = asyncio.run(store.lookup("u1", ["p2", "zz", "p1"]))
    assert found.failure is None and found.user is USERS[0]
    assert found.products == [PRODUCTS[1], None, PRODUCTS[0]] and found.missing_products == ["zz"]
    asyncio.run(store.lookup("nobody", []))
    assert store.stats.as_dict() == {
        "lookups": 2,
        "errors": 0,
        "timeouts": 0,
        "short_circuits": 0,
        "defaulted_users": 1,
        "defaulted_products": 1,
        "bad_records": 0,
    }
    assert list(store.catalog()) == ["p1", "p2"]


def test_without_a_catalog_every_lookup_misses(tmp_path: Path) -> None:
    store = InMemoryFeatureStore.from_home(tmp_path)
    found = asyncio.run(store.lookup("u1", ["p1"]))
    assert found.user is None and found.missing_products == ["p1"] and list(store.catalog()) == []


def test_a_failed_lookup_defaults_everyone() -> None:
    failed = FeatureLookup.failed(["a", "b"], FAILURE_TIMEOUT)
    assert failed.user is None and failed.products == [None, None] and failed.missing_products == ["a", "b"]
    stats = FeatureStats()
    stats.count(failed)
    assert stats.defaulted_users == 1 and stats.defaulted_products == 2
