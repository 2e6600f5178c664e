"""``/v1/recommendations`` in process: the FastAPI app under its lifespan, with a stand-in for the worker pool.

The stand-in scores each row by its rating feature, so rankings are known in advance; it counts its calls, so
the tests see when the prediction cache or the fallback spared a worker.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from tandem.common.features import FEATURE_NAMES
from tandem.common.settings import GatewaySettings
from tandem.common.wire import InferRequest, Reply, Tensor
from tandem.gateway.app import create_app
from tandem.gateway.deadlines import Deadline
from tandem.gateway.feature_store import (
    FAILURE_TIMEOUT,
    FeatureLookup,
    FeatureStats,
    InMemoryFeatureStore,
)

RATING = FEATURE_NAMES.index("rating")
USERS = [{"user_id": "u1", "age": 30, "fav_category": "wool"}]
PRODUCTS = [
    {"product_id": "w1", "category": "wool", "stock": 3, "rating": 5.0},
    {"product_id": "w2", "category": "wool", "stock": 3, "rating": 4.9},
    {"product_id": "w3", "category": "wool", "stock": 3, "rating": 4.8},
    {"product_id": "s1", "category": "silk", "stock": 3, "rating": 4.0},
    {"product_id": "gone", "category": "silk", "stock": 0, "rating": 5.0},
    {"product_id": "banned", "category": "cotton", "stock": 9, "rating": 5.0, "blocked": True},
    {"product_id": "c1", "category": "cotton", "stock": 1, "rating": 2.0},
]


class ScoringPool:
    """Scores a row by its rating feature; serves ``ranker`` version ``version``."""

    def __init__(self, version: str = "7") -> None:
        self.version = version
        self.calls = 0

    def models(self) -> dict[str, dict[str, dict[str, Any]]]:
        return {"ranker": {self.version: {}}}

    async def infer(self, request: InferRequest, deadline: Deadline) -> Reply:
        self.calls += 1
        rows = request.inputs[0].to_numpy()
        return Reply("r", "ok", "ranker", self.version, [Tensor.from_numpy("score", rows[:, RATING].copy())])


class FailingStore:
    """A store that cannot answer; it remembers the budget each lookup was given."""

    def __init__(self) -> None:
        self.stats = FeatureStats()
        self.budgets: list[float | None] = []

    async def lookup(self, user_id: str, product_ids: Sequence[str], timeout_s: float | None = None) -> FeatureLookup:
        self.budgets.append(timeout_s)
        await asyncio.sleep(0)
        return FeatureLookup.failed(product_ids, FAILURE_TIMEOUT)

    def catalog(self) -> Sequence[str]:
        return ["w1", "w2"]


@asynccontextmanager
async def _serving(tmp_path: Path, store: Any, **settings: Any) -> AsyncIterator[tuple[httpx.AsyncClient, ScoringPool]]:
    """The app under its lifespan (the router's included), its pool replaced by a ``ScoringPool``."""
    values = {"home": tmp_path, "workers": "", "max_per_category": 2, **settings}
    app = create_app(GatewaySettings(**values), features=store)
    async with app.router.lifespan_context(app):
        pool = ScoringPool()
        app.state.tandem.pool = pool
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://gateway") as client:
            yield client, pool


def _ids(body: dict) -> list[str]:
    return [item["product_id"] for item in body["items"]]


def test_known_entities_are_ranked_filtered_and_capped(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with _serving(tmp_path, InMemoryFeatureStore(USERS, PRODUCTS)) as (client, _):
            body = (await client.post("/v1/recommendations", json={"user_id": "u1", "k": 10})).json()
        # By rating; out of stock and blocked dropped; at most 2 wool.
        assert _ids(body) == ["w1", "w2", "s1", "c1"]
        assert [item["score"] for item in body["items"]] == pytest.approx([1.0, 0.98, 0.8, 0.4])
        assert body["degraded"] is False and "defaulted" not in body
        assert body["model"] == {"name": "ranker", "version": "7"}

    asyncio.run(scenario())


def test_unknown_user_and_products_are_defaulted_and_said_so(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with _serving(tmp_path, InMemoryFeatureStore(USERS, PRODUCTS)) as (client, _):
            candidates = ["c1", "nope", "w1", "nope"]
            answer = await client.post("/v1/recommendations", json={"user_id": "x", "candidates": candidates})
        assert answer.status_code == 200
        body = answer.json()
        assert _ids(body) == ["w1", "c1"]  # the unknown product has the defaults: out of stock, so not shown
        assert body["degraded"] is True
        assert body["defaulted"] == {"user": True, "products": ["nope"]}

    asyncio.run(scenario())


def test_a_failing_store_answers_from_the_fallback_without_a_worker(tmp_path: Path) -> None:
    store = FailingStore()

    async def scenario() -> None:
        async with _serving(tmp_path, store, fallback_score=0.01, feature_timeout_ms=40.0) as (client, pool):
            answer = await client.post(
                "/v1/recommendations",
                json={"user_id": "u1", "candidates": ["b", "a", "b", "c"], "k": 2},
                headers={"X-Request-Timeout-Ms": "25"},
            )
            await client.post("/v1/recommendations", json={"user_id": "u1"})
        assert answer.status_code == 200
        body = answer.json()
        assert body["items"] == [{"product_id": "b", "score": 0.01}, {"product_id": "a", "score": 0.01}]
        assert body["degraded"] is True
        assert body["defaulted"] == {"user": True, "features": "timeout", "scores": "fallback"}
        assert body["model"] == {"name": "ranker", "version": None}
        assert pool.calls == 0
        # The lookup's budget is the smaller of the feature timeout and what is left of the deadline.
        assert store.budgets[0] is not None and 0 < store.budgets[0] <= 0.025
        assert store.budgets[1] == pytest.approx(0.04)

    asyncio.run(scenario())


def test_no_catalog_is_a_degraded_empty_answer_and_an_empty_list_a_bad_request(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with _serving(tmp_path, InMemoryFeatureStore([], [])) as (client, _):
            body = (await client.post("/v1/recommendations", json={"user_id": "u1"})).json()
            answer = await client.post("/v1/recommendations", json={"user_id": "u1", "candidates": []})
        assert body["items"] == [] and body["degraded"] is True and body["defaulted"] == {"catalog": True}
        assert answer.status_code == 400 and "empty" in answer.json()["error"]

    asyncio.run(scenario())


def test_an_unknown_field_is_a_bad_request_that_names_it(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with _serving(tmp_path, InMemoryFeatureStore([], [])) as (client, _):
            answer = await client.post("/v1/recommendations", json={"user_id": "u1", "limit": 3})
        assert answer.status_code == 400
        assert answer.json()["error"].startswith("limit: ") and "not permitted" in answer.json()["error"]

    asyncio.run(scenario())


def test_the_prediction_cache_spares_the_worker_for_the_same_rows(tmp_path: Path) -> None:
    async def scenario() -> None:
        store = InMemoryFeatureStore(USERS, PRODUCTS)
        async with _serving(tmp_path, store, cache_models="ranker:60") as (client, pool):

            async def ask(**body: Any) -> dict:
                return (await client.post("/v1/recommendations", json={"user_id": "u1", **body})).json()

            first, second = await ask(), await ask()
            assert pool.calls == 1 and first["items"] == second["items"]
            await ask(k=1)  # the same rows, another k: still cached
            assert pool.calls == 1
            await ask(candidates=["w1"])
            assert pool.calls == 2
            pool.version = "8"  # a new version goes live: version 7's cached answer is not used
            assert (await ask())["model"]["version"] == "8" and pool.calls == 3

    asyncio.run(scenario())


def test_per_model_pipelines_and_an_unknown_step_fails_the_start(tmp_path: Path) -> None:
    store = InMemoryFeatureStore(USERS, PRODUCTS)

    async def scenario() -> None:
        steps = "sellable;other=in_stock"
        async with _serving(tmp_path, store, postprocess_steps=steps, max_per_category=0) as (client, _):
            body = (await client.post("/v1/recommendations", json={"user_id": "u1"})).json()
        assert _ids(body) == ["w1", "w2", "w3", "s1", "c1"]  # the default pipeline: no cap step
        with pytest.raises(ValueError, match="typo"):
            async with _serving(tmp_path, store, postprocess_steps="sellable,typo"):
                pass

    asyncio.run(scenario())
