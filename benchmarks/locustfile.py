"""Locust users for Tandem, for those who prefer Locust to ``benchmarks/loadgen.py`` (Locust is not a dependency).

Two users, weighted 3:1: ``RankerV2`` sends a V2 infer of one demo-ranker row, ``Recommendations`` asks
``/v1/recommendations`` to rank 100 catalog products for a random demo user. Both send
``X-Request-Timeout-Ms`` (``TANDEM_LOCUST_TIMEOUT_MS``, default 1000) and count anything but 200 as a failure.

    pip install locust
    locust -f benchmarks/locustfile.py --host http://127.0.0.1:8000 --headless -u 50 -r 10 -t 60s

Locust's users are closed loops with think time (``wait_time``); for open-loop load at a fixed arrival rate,
and exact latency percentiles from the same machine's cheap client, use ``python -m benchmarks.loadgen``.
"""

from __future__ import annotations

import json
import os
import random

from locust import HttpUser, between, task

NUM_FEATURES = int(os.environ.get("TANDEM_LOCUST_NUM_FEATURES", "0")) or None
TIMEOUT_MS = os.environ.get("TANDEM_LOCUST_TIMEOUT_MS", "1000")
CANDIDATES = 100
USERS = 2000  # the demo store: u00000..u01999
PRODUCTS = 300  # p0000..p0299
WAIT_S = (0.0, 0.01)


def _num_features() -> int:
    """The ranker's input width: from the environment, else from the shared feature definition."""
    if NUM_FEATURES is not None:
        return NUM_FEATURES
    try:
        from tandem.common.features import NUM_FEATURES as width
    except ImportError:
        raise RuntimeError("run Locust in Tandem's environment, or set TANDEM_LOCUST_NUM_FEATURES") from None
    return width


class RankerV2(HttpUser):
    """POST /v2/models/ranker/infer with one random feature row (JSON tensor data)."""

    weight = 3
    wait_time = between(*WAIT_S)

    def on_start(self) -> None:
        width = _num_features()
        row = [random.gauss(0.0, 1.0) for _ in range(width)]
        self.body = json.dumps({"inputs": [{"name": "features", "shape": [1, width], "datatype": "FP32", "data": row}]})

    @task
    def infer(self) -> None:
        headers = {"Content-Type": "application/json", "X-Request-Timeout-Ms": TIMEOUT_MS}
        with self.client.post(
            "/v2/models/ranker/infer", data=self.body, headers=headers, name="v2 infer", catch_response=True
        ) as response:
            if response.status_code != 200:
                response.failure(f"status {response.status_code}")


class Recommendations(HttpUser):
    """POST /v1/recommendations for a random demo user over 100 random demo products."""

    weight = 1
    wait_time = between(*WAIT_S)

    @task
    def recommend(self) -> None:
        candidates = [f"p{n:04d}" for n in random.sample(range(PRODUCTS), CANDIDATES)]
        body = {"user_id": f"u{random.randrange(USERS):05d}", "candidates": candidates, "k": 10}
        headers = {"X-Request-Timeout-Ms": TIMEOUT_MS}
        with self.client.post(
            "/v1/recommendations", json=body, headers=headers, name="recommendations", catch_response=True
        ) as response:
            if response.status_code != 200:
                response.failure(f"status {response.status_code}")
