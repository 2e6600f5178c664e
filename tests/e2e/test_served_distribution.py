"""The served model, judged statistically, and its drift gauges: real worker and gateway processes over HTTP.

The demo ranker is trained on the training split of the demo store (``tandem/demo/bootstrap.py``); the held-out
split was never seen by it. 1,000 requests built from held-out interactions (800 V2 infer calls of 1 to 8 rows,
200 ``/v1/recommendations`` calls whose candidates are each user's held-out products, so the gateway builds the
rows itself) must give scores whose distribution matches the scores the registered model computes in process
on the whole held-out split: two-sample Kolmogorov-Smirnov, p > 0.01. The test has power: the same V2 rows with
one feature scaled by 0.9 (a unit slip in the serving path) fail it.

Drift: traffic from the held-out split keeps every feature's ``tandem_feature_drift_psi`` on ``/metrics`` below
0.1; traffic with one feature shifted raises that feature's above 0.2 while the other inputs stay below 0.1.
"""

from __future__ import annotations

import asyncio
import itertools
import os
from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families
from scipy.stats import ks_2samp

from tandem.common.features import FEATURE_NAMES, build_training_rows
from tandem.demo import dataset
from tandem.demo.bootstrap import HOLDOUT_FRACTION
from tests.support.stack import Registry, Stack

SEED = 7  # the bootstrap's default seed: the same split it held out
V2_REQUESTS = 800
REC_REQUESTS = 200
MAX_V2_ROWS = 8
SKEWED = "rating"
SKEW_SCALE = 0.9
MIN_P_VALUE = 0.01
CONCURRENCY = 16
TIMEOUT_S = 30.0
GATEWAY_ENV = {"TANDEM_REQUEST_TIMEOUT_MS": "10000", "TANDEM_POSTPROCESS_STEPS": ""}  # every candidate scored back
DRIFT_ENV = {"TANDEM_DRIFT_HALF_LIFE_ROWS": "2000", "TANDEM_DRIFT_MIN_ROWS": "500", **GATEWAY_ENV}
DRIFT_ROWS_PER_REQUEST = 32
DRIFT_PHASE_ROWS = 6000
SHIFTED = "log_price"
SHIFT = 0.7  # in log price: about twice the price
METRIC = "tandem_feature_drift_psi"


@dataclass
class Holdout:
    data: dataset.DemoDataset
    idx: np.ndarray

    def rows(self, idx: np.ndarray) -> np.ndarray:
        return build_training_rows(
            self.data.users, self.data.products, self.data.user_idx[idx], self.data.product_idx[idx]
        )


@pytest.fixture(scope="module")
def stack(registry: Registry, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """One worker serving the ranker; gateways are started by the tests on it."""
    stack = Stack(registry, tmp_path_factory.mktemp("served-logs"))
    try:
        stack.start_worker(models="ranker@champion")
        yield stack
    finally:
        stack.stop()


@pytest.fixture(scope="module")
def holdout(registry: Registry) -> Holdout:
    data = dataset.read(registry.home)
    _, holdout_idx = dataset.split(data, HOLDOUT_FRACTION, seed=SEED)
    return Holdout(data, holdout_idx)


def _offline_scores(registry: Registry, version: str, rows: np.ndarray) -> np.ndarray:
    """What the registered model computes in process, as training code would evaluate it."""
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    import mlflow
    import mlflow.pytorch
    import torch

    client_uri = registry.uri
    mlflow.set_tracking_uri(client_uri)
    mlflow.set_registry_uri(client_uri)
    module = mlflow.pytorch.load_model(f"models:/ranker/{version}").eval()
    with torch.inference_mode():
        return module(torch.from_numpy(rows)).numpy().reshape(-1)


def _v2_body(rows: np.ndarray) -> dict:
    tensor = {"name": "features", "shape": list(rows.shape), "datatype": "FP32", "data": rows.ravel().tolist()}
    return {"inputs": [tensor]}


async def _post_all(url: str, calls: list[tuple[str, dict]]) -> list[dict]:
    """POST every (path, body) with bounded concurrency; the JSON answers, in order."""
    limit = asyncio.Semaphore(CONCURRENCY)
    async with httpx.AsyncClient(base_url=url, timeout=TIMEOUT_S) as client:

        async def post(path: str, body: dict) -> dict:
            async with limit:
                answer = await client.post(path, json=body)
            assert answer.status_code == 200, answer.text
            return answer.json()

        return await asyncio.gather(*(post(path, body) for path, body in calls))


def _v2_scores(answers: list[dict]) -> np.ndarray:
    return np.concatenate([np.asarray(a["outputs"][0]["data"], dtype=np.float32) for a in answers])


def _plan(holdout: Holdout) -> tuple[list[tuple[str, dict]], list[np.ndarray], np.ndarray]:
    """The 1,000 requests: recommendation calls for 200 users' held-out products, V2 calls of other pairs."""
    rng = np.random.default_rng(SEED)
    data, idx = holdout.data, holdout.idx
    users = rng.choice(np.unique(data.user_idx[idx]), REC_REQUESTS, replace=False)
    calls: list[tuple[str, dict]] = []
    for user in users:
        products = [data.products[p]["product_id"] for p in data.product_idx[idx][data.user_idx[idx] == user]]
        candidates = list(dict.fromkeys(products))
        calls.append(
            (
                "/v1/recommendations",
                {"user_id": data.users[user]["user_id"], "candidates": candidates, "k": len(candidates)},
            )
        )
    others = rng.permutation(idx[~np.isin(data.user_idx[idx], users)])
    sizes = [1 + i % MAX_V2_ROWS for i in range(V2_REQUESTS)]
    bounds = np.cumsum([0, *sizes])
    v2_rows = holdout.rows(others[: bounds[-1]])
    batches = [v2_rows[start:end] for start, end in itertools.pairwise(bounds)]
    calls += [("/v2/models/ranker/infer", _v2_body(batch)) for batch in batches]
    return calls, batches, v2_rows


def test_served_scores_match_the_offline_distribution_on_held_out_data(stack: Stack, holdout: Holdout) -> None:
    url = stack.start_gateway(env=GATEWAY_ENV)
    calls, _, v2_rows = _plan(holdout)
    assert len(calls) == V2_REQUESTS + REC_REQUESTS == 1000
    answers = asyncio.run(_post_all(url, calls))
    recommended = [item["score"] for a in answers[:REC_REQUESTS] for item in a["items"]]
    versions = {a["model"]["version"] for a in answers[:REC_REQUESTS]} | {
        a["model_version"] for a in answers[REC_REQUESTS:]
    }
    assert len(versions) == 1, versions
    served = np.concatenate([np.asarray(recommended, dtype=np.float32), _v2_scores(answers[REC_REQUESTS:])])
    assert len(served) > len(v2_rows) + REC_REQUESTS  # every user had at least one held-out product

    offline = _offline_scores(stack.registry, versions.pop(), holdout.rows(holdout.idx))
    same = ks_2samp(served, offline)
    assert same.pvalue > MIN_P_VALUE, (
        f"served scores differ from offline ones: KS {same.statistic:.4f}, p {same.pvalue:.3g}"
    )

    # Power: the same V2 rows through the same gateway, with one feature off by 10%, must fail the same test.
    skewed_rows = v2_rows.copy()
    skewed_rows[:, FEATURE_NAMES.index(SKEWED)] *= SKEW_SCALE
    skewed_calls = [
        ("/v2/models/ranker/infer", _v2_body(skewed_rows[i : i + 64])) for i in range(0, len(skewed_rows), 64)
    ]
    skewed = ks_2samp(_v2_scores(asyncio.run(_post_all(url, skewed_calls))), offline)
    assert skewed.pvalue < MIN_P_VALUE, f"the skewed path passed: KS {skewed.statistic:.4f}, p {skewed.pvalue:.3g}"


def _psi(url: str) -> dict[str, float]:
    text = httpx.get(f"{url}/metrics", timeout=TIMEOUT_S).text
    return {
        sample.labels["feature"]: sample.value
        for family in text_string_to_metric_families(text)
        if family.name == METRIC
        for sample in family.samples
        if sample.labels["model"] == "ranker"
    }


def test_drift_gauges_stay_low_on_held_out_traffic_and_flag_a_shifted_feature(stack: Stack, holdout: Holdout) -> None:
    url = stack.start_gateway(env=DRIFT_ENV)  # a fresh gateway: its histograms hold only this test's traffic
    order = np.random.default_rng(SEED + 1).permutation(holdout.idx)
    steady = holdout.rows(order[:DRIFT_PHASE_ROWS])
    shifted = holdout.rows(order[DRIFT_PHASE_ROWS : 2 * DRIFT_PHASE_ROWS])
    shifted[:, FEATURE_NAMES.index(SHIFTED)] += SHIFT

    def send(rows: np.ndarray) -> None:
        step = DRIFT_ROWS_PER_REQUEST
        asyncio.run(
            _post_all(
                url, [("/v2/models/ranker/infer", _v2_body(rows[i : i + step])) for i in range(0, len(rows), step)]
            )
        )

    send(steady)
    before = _psi(url)
    assert set(before) == {*FEATURE_NAMES, "__score__"}, before
    assert max(before.values()) < 0.1, before
    send(shifted)
    after = _psi(url)
    assert after[SHIFTED] > 0.2, after
    inputs = {name: value for name, value in after.items() if name not in (SHIFTED, "__score__")}
    assert max(inputs.values()) < 0.1, after
