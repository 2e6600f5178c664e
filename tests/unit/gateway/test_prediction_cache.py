"""The prediction cache: LRU eviction, TTL with an injected clock, keys that follow the live version."""

from __future__ import annotations

import asyncio
from typing import Any

import numpy as np
import pytest

from tandem.common.wire import InferRequest, Reply, Tensor
from tandem.gateway.deadlines import Deadline
from tandem.gateway.prediction_cache import PredictionCache, digest_inputs, live_version, parse_ttls


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _inputs(value: float, shape: tuple[int, ...] = (2, 3), name: str = "x") -> list[Tensor]:
    return [Tensor.from_numpy(name, np.full(shape, value, dtype=np.float32))]


def _reply(version: str = "1", value: float = 0.5, status: str = "ok") -> Reply:
    return Reply("r", status, "ranker", version, [Tensor.from_numpy("y", np.full(2, value, np.float32))])


SERVED_V1 = {"ranker": {"1": {}}}


def test_lru_evicts_the_least_recently_used() -> None:
    cache = PredictionCache({"ranker": 60}, max_entries=2, clock=Clock())
    keys = [cache.key_for("ranker", None, _inputs(i), SERVED_V1) for i in range(3)]
    assert all(key is not None for key in keys)
    cache.put(keys[0], _reply(value=0))
    cache.put(keys[1], _reply(value=1))
    assert cache.get(keys[0]) is not None  # keys[0] is now the most recently used
    cache.put(keys[2], _reply(value=2))
    assert cache.get(keys[1]) is None and cache.get(keys[0]) is not None and cache.get(keys[2]) is not None
    assert len(cache) == 2 and cache.stats.evictions == 1


def test_entries_expire_after_their_models_ttl() -> None:
    clock = Clock()
    cache = PredictionCache({"ranker": 30, "echo": 5}, max_entries=10, clock=clock)
    ranker = cache.key_for("ranker", None, _inputs(1), SERVED_V1)
    echo = cache.key_for("echo", None, _inputs(1), {"echo": {"7": {}}})
    cache.put(ranker, _reply())
    cache.put(echo, Reply("r", "ok", "echo", "7", []))
    clock.now += 4.9
    assert cache.get(echo) is not None
    clock.now += 0.1
    assert cache.get(echo) is None and cache.get(ranker) is not None
    clock.now += 25.0
    assert cache.get(ranker) is None
    assert cache.stats.expirations == 2 and len(cache) == 0


def test_a_new_version_never_gets_the_old_versions_answer() -> None:
    cache = PredictionCache({"ranker": 60}, max_entries=10, clock=Clock())
    old = cache.key_for("ranker", None, _inputs(1), SERVED_V1)
    cache.put(old, _reply("1"))
    assert cache.get(old) is not None
    new = cache.key_for("ranker", None, _inputs(1), {"ranker": {"2": {}}})
    assert new is not None and new != old and cache.get(new) is None
    # Mid-rollout both versions are live: which one answers is unknown, so the cache stays out of it.
    assert cache.key_for("ranker", None, _inputs(1), {"ranker": {"1": {}, "2": {}}}) is None
    # A request naming a version uses that version, if it is served.
    assert cache.key_for("ranker", "1", _inputs(1), {"ranker": {"1": {}, "2": {}}}) == old
    assert cache.key_for("ranker", "3", _inputs(1), SERVED_V1) is None
    assert cache.stats.uncacheable == 2


def test_only_successful_answers_of_the_keyed_version_are_kept() -> None:
    cache = PredictionCache({"ranker": 60}, max_entries=10, max_entry_bytes=64, clock=Clock())
    key = cache.key_for("ranker", None, _inputs(1), SERVED_V1)
    cache.put(key, _reply(status="overloaded"))
    cache.put(key, _reply(version="2"))  # the worker swapped versions between lookup and answer
    big = Reply("r", "ok", "ranker", "1", [Tensor.from_numpy("y", np.zeros(100, np.float32))])
    cache.put(key, big)
    assert cache.get(key) is None and cache.stats.stores == 0


def test_uncached_models_and_unserved_models_have_no_key() -> None:
    cache = PredictionCache({"ranker": 60}, max_entries=10)
    assert cache.key_for("echo", None, _inputs(1), {"echo": {"1": {}}}) is None
    assert cache.key_for("ranker", None, _inputs(1), {}) is None
    assert not cache.caches("echo") and cache.caches("ranker")


def test_the_digest_sees_values_shapes_dtypes_names_and_outputs() -> None:
    base = digest_inputs(_inputs(1.0))
    assert digest_inputs(_inputs(1.0)) == base
    assert digest_inputs(_inputs(1.0000001)) != base
    assert digest_inputs(_inputs(1.0, shape=(3, 2))) != base
    assert digest_inputs(_inputs(1.0, name="z")) != base
    as_int = [Tensor("x", "INT32", (2, 3), np.full((2, 3), 1.0, np.float32).view(np.int32).tobytes())]
    assert digest_inputs(as_int) != base
    assert digest_inputs(_inputs(1.0), ["y"]) != base
    two = _inputs(1.0) + _inputs(2.0, name="w")
    assert digest_inputs(two) != digest_inputs(list(reversed(two)))


@pytest.mark.parametrize(
    ("setting", "expected"),
    [("", {}), ("ranker:30", {"ranker": 30.0}), ("ranker:30, echo:0.5", {"ranker": 30.0, "echo": 0.5})],
)
def test_parse_ttls(setting: str, expected: dict[str, float]) -> None:
    assert parse_ttls(setting) == expected


@pytest.mark.parametrize("setting", ["ranker", "ranker:", ":30", "ranker:-1", "ranker:soon"])
def test_parse_ttls_rejects(setting: str) -> None:
    with pytest.raises(ValueError, match="MODEL:TTL_S"):
        parse_ttls(setting)


def test_live_version() -> None:
    assert live_version({"m": {"4": {}}}, "m", None) == "4"
    assert live_version({"m": {"4": {}, "5": {}}}, "m", None) is None
    assert live_version({"m": {"4": {}, "5": {}}}, "m", "5") == "5"
    assert live_version({}, "m", None) is None


class FakePool:
    def __init__(self, versions: dict[str, dict[str, Any]]) -> None:
        self.versions = versions
        self.calls = 0

    def models(self) -> dict[str, dict[str, dict[str, Any]]]:
        return {"ranker": self.versions}

    async def infer(self, request: InferRequest, deadline: Deadline) -> Reply:
        self.calls += 1
        return _reply(next(iter(self.versions)), value=float(self.calls))


def test_infer_sends_once_per_input_and_version() -> None:
    pool = FakePool({"1": {}})
    cache = PredictionCache({"ranker": 60}, max_entries=10)

    async def ask(value: float) -> Reply:
        request = InferRequest("", "ranker", None, 0.0, _inputs(value))
        return await cache.infer(pool, request, Deadline(1000))

    async def scenario() -> None:
        first = await ask(1)
        assert (await ask(1)) is first and pool.calls == 1
        await ask(2)
        assert pool.calls == 2
        pool.versions = {"2": {}}
        assert (await ask(1)).version == "2" and pool.calls == 3

    asyncio.run(scenario())
    assert cache.stats.hits == 1 and cache.stats.misses == 3
