"""The Redis feature store and ``tandem features load`` against a real redis-server.

Includes the training/serving skew test: rows the gateway builds from records read back through each store
equal, byte for byte, the rows training builds for the same (user, product) pairs of the demo dataset.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest

from tandem.common.features import build_rows, build_training_rows
from tandem.common.settings import GatewaySettings
from tandem.demo import dataset as demo_dataset
from tandem.features_load import load_home, load_records
from tandem.gateway.feature_store import (
    FAILURE_ERROR,
    FAILURE_TIMEOUT,
    FAILURE_UNAVAILABLE,
    FeatureStore,
    InMemoryFeatureStore,
)
from tandem.gateway.redis_features import RedisFeatureStore, catalog_key, meta_key, product_key, user_key
from tests.support.processes import child_env
from tests.support.redis import RedisServer, redis_server_binary

FAST_TIMEOUT_MS = 100.0
BREAKER_OPEN_S = 0.3
RECOVERY_TIMEOUT_S = 5.0


@pytest.fixture(scope="module")
def demo_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A home holding the demo catalog (generated, not trained: features need no model)."""
    home = tmp_path_factory.mktemp("features-home")
    demo_dataset.write(demo_dataset.generate(), home)
    return home


def _settings(server: RedisServer, **overrides: object) -> GatewaySettings:
    values: dict[str, object] = {
        "redis_url": server.url,
        "feature_timeout_ms": FAST_TIMEOUT_MS,
        "feature_breaker_failures": 2,
        "feature_breaker_open_s": BREAKER_OPEN_S,
        **overrides,
    }
    return GatewaySettings(**values)


async def _open(server: RedisServer, **overrides: object) -> RedisFeatureStore:
    store = RedisFeatureStore.from_settings(_settings(server, **overrides))
    await store.start()
    return store


def test_records_round_trip_exactly_with_their_types(redis_server: RedisServer, demo_home: Path) -> None:
    users, products = demo_dataset.read_catalog(demo_home)
    load_home(demo_home, redis_server.url)

    async def check() -> None:
        store = await _open(redis_server)
        try:
            assert list(store.catalog()) == [p["product_id"] for p in products]
            for user in users[:50]:
                found = await store.lookup(user["user_id"], [p["product_id"] for p in products])
                assert found.failure is None and found.missing_products == []
                assert found.user == user
                assert found.products == products
            # Types survive, not just values: ints stay ints, floats stay floats, bools stay bools.
            for field, kind in (("stock", int), ("price", float), ("rating", float), ("blocked", bool)):
                assert all(type(p[field]) is kind for p in found.products), field
            for field, kind in (("age", int), ("tenure_days", int), ("avg_order_value", float)):
                assert type(found.user[field]) is kind, field
            assert store.stats.lookups == 50 and store.stats.errors == store.stats.timeouts == 0
        finally:
            await store.close()

    asyncio.run(check())


def _cli_load(home: Path, server: RedisServer) -> subprocess.CompletedProcess[str]:
    """``tandem features load`` as a user runs it."""
    argv = [sys.executable, "-m", "tandem", "features", "load", "--home", str(home), "--redis-url", server.url]
    return subprocess.run(argv, env=child_env(), capture_output=True, text=True, timeout=60, check=True)


async def _serving_rows(
    store: FeatureStore, users: Sequence[dict], products: Sequence[dict], user_idx: np.ndarray, product_idx: np.ndarray
) -> np.ndarray:
    """Rows for every pair, built the way the gateway builds them: one lookup per user, then ``build_rows``."""
    rows = np.empty((len(user_idx), build_rows(users[0], products[:1]).shape[1]), dtype=np.float32)
    for u in np.unique(user_idx):
        pairs = np.flatnonzero(user_idx == u)
        product_ids = [products[i]["product_id"] for i in product_idx[pairs]]
        found = await store.lookup(users[u]["user_id"], product_ids)
        assert found.failure is None and found.user is not None and not found.missing_products
        rows[pairs] = build_rows(found.user, found.products)
    return rows


def test_serving_builds_training_rows_bit_for_bit_through_both_stores(
    redis_server: RedisServer, demo_home: Path
) -> None:
    data = demo_dataset.read(demo_home)
    users, products = demo_dataset.read_catalog(demo_home)
    # Every logged pair (60,000): all 8 categories, out-of-stock and blocked products, every kind of user.
    user_idx, product_idx = data.user_idx, data.product_idx
    training = build_training_rows(data.users, data.products, user_idx, product_idx)
    _cli_load(demo_home, redis_server)

    async def serve() -> tuple[np.ndarray, np.ndarray]:
        redis_store = await _open(redis_server, feature_timeout_ms=2000.0)
        try:
            from_redis = await _serving_rows(redis_store, users, products, user_idx, product_idx)
        finally:
            await redis_store.close()
        memory_store = InMemoryFeatureStore.from_home(demo_home)
        return from_redis, await _serving_rows(memory_store, users, products, user_idx, product_idx)

    from_redis, from_memory = asyncio.run(serve())
    assert training.dtype == from_redis.dtype == from_memory.dtype == np.float32
    assert from_redis.tobytes() == training.tobytes()
    assert from_memory.tobytes() == training.tobytes()


def test_unknown_entities_are_none_and_counted(redis_server: RedisServer, demo_home: Path) -> None:
    load_home(demo_home, redis_server.url)

    async def check() -> None:
        store = await _open(redis_server)
        try:
            found = await store.lookup("nobody", ["p0001", "nothing", "p0002", "nada"])
        finally:
            await store.close()
        assert found.failure is None and found.user is None
        assert [p is None for p in found.products] == [False, True, False, True]
        assert found.missing_products == ["nothing", "nada"]
        assert store.stats.defaulted_users == 1 and store.stats.defaulted_products == 2

    asyncio.run(check())


def test_a_malformed_record_counts_as_unknown(redis_server: RedisServer) -> None:
    client = redis_server.client()
    client.set(user_key("u1"), b"{not json")
    client.set(product_key("p1"), b"[1, 2]")
    client.close()

    async def check() -> None:
        store = await _open(redis_server)
        try:
            found = await store.lookup("u1", ["p1"])
        finally:
            await store.close()
        assert found.failure is None and found.user is None and found.missing_products == ["p1"]
        assert store.stats.bad_records == 2

    asyncio.run(check())


def test_load_is_idempotent_and_a_smaller_load_prunes_what_is_gone(redis_server: RedisServer) -> None:
    users = [{"user_id": f"u{i}", "age": 20 + i} for i in range(5)]
    products = [{"product_id": f"p{i}", "price": 1.5 * i, "stock": i} for i in range(7)]
    client = redis_server.client()
    try:
        first = load_records(client, users, products, batch_size=3)
        keys_after_first = sorted(client.keys("tandem:features:*"))
        second = load_records(client, users, products, batch_size=2)
        assert first.version == second.version and second.deleted == 0
        assert sorted(client.keys("tandem:features:*")) == keys_after_first
        assert len(keys_after_first) == 5 + 7 + 2  # entities, catalog and meta

        third = load_records(client, users[:2], products[3:], batch_size=100)
        assert third.version != first.version and third.deleted == 3 + 3
        assert client.get(user_key("u4")) is None and client.get(product_key("p0")) is None
        assert client.get(product_key("p6")) is not None
        assert client.get(catalog_key()) == b'["p3","p4","p5","p6"]'
        assert third.version.encode() in client.get(meta_key())
    finally:
        client.close()


def test_the_catalog_follows_a_new_load(redis_server: RedisServer) -> None:
    client = redis_server.client()

    async def check() -> None:
        store = await _open(redis_server)
        try:
            assert list(store.catalog()) == []  # nothing loaded yet: empty, not an error
            load_records(client, [], [{"product_id": "a"}, {"product_id": "b"}])
            assert await store.refresh_catalog()
            assert list(store.catalog()) == ["a", "b"]
            load_records(client, [], [{"product_id": "c"}])
            assert await store.refresh_catalog()
            assert list(store.catalog()) == ["c"]
        finally:
            await store.close()

    try:
        asyncio.run(check())
    finally:
        client.close()


async def _lookup_timed(store: RedisFeatureStore) -> tuple[str | None, float]:
    began = time.perf_counter()
    found = await store.lookup("u1", ["p1", "p2"])
    return found.failure, time.perf_counter() - began


async def _until_known(store: RedisFeatureStore) -> None:
    deadline = time.monotonic() + RECOVERY_TIMEOUT_S
    while True:
        found = await store.lookup("u1", ["p1"])
        if found.failure is None and found.user is not None:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"the store did not recover: {found}")
        await asyncio.sleep(0.05)


def test_a_killed_redis_fails_fast_opens_the_breaker_and_recovers_when_back(redis_server: RedisServer) -> None:
    records = ([{"user_id": "u1"}], [{"product_id": "p1"}, {"product_id": "p2"}])
    client = redis_server.client()
    load_records(client, *records)
    client.close()

    async def check() -> None:
        store = await _open(redis_server)
        try:
            assert (await _lookup_timed(store))[0] is None  # a pooled connection now exists
            redis_server.kill()
            failures = [await _lookup_timed(store) for _ in range(4)]
            # Refused connections fail at once; after 2 failures the breaker skips Redis altogether.
            assert [reason for reason, _ in failures] == [FAILURE_ERROR, FAILURE_ERROR] + [FAILURE_UNAVAILABLE] * 2
            assert all(seconds < FAST_TIMEOUT_MS / 1000 for _, seconds in failures), failures
            assert store.stats.errors == 2 and store.stats.short_circuits == 2 and store.breaker.state == "open"

            redis_server.start()  # same port, empty: the data went with the process
            again = redis_server.client()
            load_records(again, *records)
            again.close()
            await _until_known(store)
            assert store.breaker.state == "closed"
        finally:
            await store.close()

    asyncio.run(check())


def test_a_hung_redis_times_out_within_the_budget_and_recovers(redis_server: RedisServer) -> None:
    client = redis_server.client()
    load_records(client, [{"user_id": "u1"}], [{"product_id": "p1"}])
    client.close()

    async def check() -> None:
        store = await _open(redis_server)
        try:
            redis_server.pause()
            reason, seconds = await _lookup_timed(store)
            assert reason == FAILURE_TIMEOUT and seconds < 2 * FAST_TIMEOUT_MS / 1000, seconds
            # A caller's budget shorter than the store's timeout wins.
            began = time.perf_counter()
            found = await store.lookup("u1", ["p1"], timeout_s=0.01)
            assert found.failure in (FAILURE_TIMEOUT, FAILURE_UNAVAILABLE)
            assert time.perf_counter() - began < FAST_TIMEOUT_MS / 1000
            assert store.stats.timeouts >= 1
            redis_server.resume()
            await _until_known(store)
        finally:
            redis_server.resume()
            await store.close()

    asyncio.run(check())


def test_cli_features_load_shows_progress_and_is_idempotent(redis_server: RedisServer, demo_home: Path) -> None:
    argv = [sys.executable, "-m", "tandem", "features", "load", "--home", str(demo_home), "--batch-size", "400"]
    env = child_env({"TANDEM_REDIS_URL": redis_server.url})
    runs = [subprocess.run(argv, env=env, capture_output=True, text=True, timeout=60) for _ in range(2)]
    for run in runs:
        assert run.returncode == 0, run.stderr
        assert "loading features" in run.stderr and "2300/2300" in run.stderr
    assert "loaded 2000 users and 300 products" in runs[0].stdout
    version = runs[0].stdout.split("version ")[1].split(",")[0]
    assert f"version {version}, 0 stale entities removed" in runs[1].stdout
    client = redis_server.client()
    try:
        assert client.dbsize() == 2000 + 300 + 2
    finally:
        client.close()


def test_cli_features_load_without_redis_says_so(demo_home: Path) -> None:
    argv = [sys.executable, "-m", "tandem", "features", "load", "--home", str(demo_home)]
    run = subprocess.run(argv, env=child_env({"TANDEM_REDIS_URL": ""}), capture_output=True, text=True, timeout=60)
    assert run.returncode == 2 and "TANDEM_REDIS_URL" in run.stderr


def test_a_caller_with_little_time_left_does_not_trip_the_breaker(redis_server: RedisServer) -> None:
    async def check() -> None:
        store = await _open(redis_server)
        try:
            redis_server.pause()
            for _ in range(5):  # more than the breaker's threshold of 2
                assert (await store.lookup("u1", ["p1"], timeout_s=0.005)).failure == FAILURE_TIMEOUT
            assert store.breaker.state == "closed" and store.stats.timeouts == 5
        finally:
            redis_server.resume()
            await store.close()

    asyncio.run(check())


def test_a_missing_redis_server_fails_with_the_install_hint(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("tests.support.redis.shutil.which", lambda name: None)
    with pytest.raises(pytest.fail.Exception, match="make install-test"):
        redis_server_binary()
