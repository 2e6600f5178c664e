"""Drift monitoring in process: the gateway app under its lifespan, read through its real ``/metrics`` route.

A stand-in worker pool serves ``ranker`` with a drift reference built from the demo store's training split
(``tandem.common.drift``), scoring rows with a fixed logistic function. Traffic drawn from the held-out split
keeps every feature's PSI low; the same traffic with one feature shifted raises that feature's PSI above 0.2
while the others stay low.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tandem.common import drift
from tandem.common.errors import NotFound
from tandem.common.features import FEATURE_NAMES, NUM_FEATURES, build_training_rows
from tandem.common.settings import GatewaySettings
from tandem.common.wire import InferRequest, Reply, Tensor
from tandem.demo import dataset
from tandem.gateway.app import create_app
from tandem.gateway.deadlines import Deadline
from tandem.gateway.drift import DriftMonitor, pool_references
from tandem.gateway.feature_store import InMemoryFeatureStore

VERSION = "drift-it-1"  # the gauge is process-wide: a label no other test uses
METRIC = "tandem_feature_drift_psi"
ROWS_PER_REQUEST = 32
SHIFTED = "log_price"
SHIFT = 0.7  # in log price: about twice the price
WEIGHTS = np.random.default_rng(0).normal(scale=0.5, size=NUM_FEATURES).astype(np.float32)


def _score(rows: np.ndarray) -> np.ndarray:
    return (1.0 / (1.0 + np.exp(-(rows @ WEIGHTS)))).astype(np.float32)


class StandInPool:
    """Serves ``ranker`` version ``VERSION`` with a drift reference; scores with ``_score``."""

    def __init__(self, reference: dict[str, Any]) -> None:
        self.entry = {"name": "ranker", "version": VERSION, "aliases": ["champion"], "drift_reference": reference}
        self.rows = 0

    def models(self) -> dict[str, dict[str, dict[str, Any]]]:
        return {"ranker": {VERSION: self.entry}}

    def check_served(self, model: str, version: str | None) -> None:
        if model != "ranker":
            raise NotFound(f"model {model!r} is not served")

    async def infer(self, request: InferRequest, deadline: Deadline) -> Reply:
        rows = request.inputs[0].to_numpy()
        self.rows += len(rows)
        return Reply("r", "ok", "ranker", VERSION, [Tensor.from_numpy("score", _score(rows))])


@pytest.fixture(scope="module")
def store() -> tuple[dataset.DemoDataset, np.ndarray, np.ndarray]:
    data = dataset.generate()
    train_idx, holdout_idx = dataset.split(data)
    return data, train_idx, holdout_idx


def _rows(data: dataset.DemoDataset, idx: np.ndarray) -> np.ndarray:
    return build_training_rows(data.users, data.products, data.user_idx[idx], data.product_idx[idx])


@asynccontextmanager
async def _gateway(tmp_path: Path, data: dataset.DemoDataset, pool: StandInPool) -> AsyncIterator[httpx.AsyncClient]:
    settings = GatewaySettings(home=tmp_path, workers="", postprocess_steps="")
    app = create_app(settings, features=InMemoryFeatureStore(data.users, data.products))
    async with app.router.lifespan_context(app):
        app.state.tandem.pool = pool
        app.state.tandem.drift = DriftMonitor(pool_references(pool), half_life_rows=2000, min_rows=500)
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://gateway") as client:
            yield client


async def _infer(client: httpx.AsyncClient, rows: np.ndarray) -> None:
    for start in range(0, len(rows), ROWS_PER_REQUEST):
        batch = rows[start : start + ROWS_PER_REQUEST]
        tensor = {"name": "features", "shape": list(batch.shape), "datatype": "FP32", "data": batch.ravel().tolist()}
        answer = await client.post("/v2/models/ranker/infer", json={"inputs": [tensor]})
        assert answer.status_code == 200, answer.text


async def _psi(client: httpx.AsyncClient) -> dict[str, float]:
    text = (await client.get("/metrics")).text
    return {
        sample.labels["feature"]: sample.value
        for family in text_string_to_metric_families(text)
        if family.name == METRIC
        for sample in family.samples
        if sample.labels["version"] == VERSION and sample.labels["model"] == "ranker"
    }


def test_psi_stays_low_for_training_like_traffic_and_rises_for_a_shifted_feature(tmp_path: Path, store) -> None:
    data, train_idx, holdout_idx = store
    train = _rows(data, train_idx)
    reference = drift.build_reference({"features": train}, {"score": _score(train)}, {"features": FEATURE_NAMES})
    pool = StandInPool(reference.to_dict())
    holdout = _rows(data, holdout_idx)
    order = np.random.default_rng(1).permutation(len(holdout))
    steady, later = holdout[order[:6000]], holdout[order[6000:]].copy()
    later[:, FEATURE_NAMES.index(SHIFTED)] += SHIFT

    async def scenario() -> tuple[dict[str, float], dict[str, float], int]:
        async with _gateway(tmp_path, data, pool) as client:
            assert await _psi(client) == {}  # nothing exported before min_rows
            await _infer(client, steady)
            for user in data.users[:8]:  # the feature path feeds the monitor too
                answer = await client.post("/v1/recommendations", json={"user_id": user["user_id"], "k": 5})
                assert answer.status_code == 200, answer.text
            before = await _psi(client)
            await _infer(client, later)
            return before, await _psi(client), pool.rows

    before, after, scored = asyncio.run(scenario())
    assert scored == len(holdout) + 8 * len(data.products)
    assert set(before) == {*FEATURE_NAMES, drift.SCORE_FEATURE}
    assert max(before.values()) < 0.1, before
    assert after[SHIFTED] > 0.2, after
    others = {name: value for name, value in after.items() if name not in (SHIFTED, drift.SCORE_FEATURE)}
    assert max(others.values()) < 0.1, after
