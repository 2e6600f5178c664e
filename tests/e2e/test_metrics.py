"""Prometheus metrics of a real gateway and worker move as real traffic says they should."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import httpx
from prometheus_client.parser import text_string_to_metric_families

from tandem.processes import free_port
from tests.support.stack import Stack

INFER_ROUTE = "/v2/models/{model}/infer"


def scrape(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of ``url`` by (name, sorted labels)."""
    text = httpx.get(url, timeout=10).text
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(samples: dict, name: str, **labels: str) -> float:
    """The sum of the samples of ``name`` whose labels include ``labels``."""
    return sum(v for (n, ls), v in samples.items() if n == name and set(labels.items()) <= set(ls))


async def _traffic(url: str, count: int) -> list[int]:
    body = {"inputs": [{"name": "x", "shape": [2, 4], "datatype": "FP32", "data": [1, 2, 3, 4, 5, 6, 7, 8]}]}
    async with httpx.AsyncClient(base_url=url, timeout=30, limits=httpx.Limits(max_connections=count)) as client:
        answers = await asyncio.gather(*(client.post("/v2/models/sleeper/infer", json=body) for _ in range(count)))
    return [a.status_code for a in answers]


def test_gateway_and_worker_metrics_follow_real_traffic(make_stack: Callable[..., Stack]) -> None:
    metrics_port = free_port()
    stack = make_stack(workers=0, gateway=False)
    stack.start_worker(env={"TANDEM_METRICS_PORT": str(metrics_port)})
    url = stack.start_gateway()
    worker_metrics = f"http://127.0.0.1:{metrics_port}/metrics"
    gateway_before, worker_before = scrape(f"{url}/metrics"), scrape(worker_metrics)

    statuses = asyncio.run(_traffic(url, 64))
    assert statuses == [200] * 64
    assert httpx.post(f"{url}/v2/models/nope/infer", json={"inputs": []}).status_code == 404
    assert httpx.post(f"{url}/v2/models/sleeper/versions/nope-v/infer", json={"inputs": []}).status_code == 404
    assert httpx.get(f"{url}/v2/models/sleeper/ready").status_code == 200

    gateway, worker = scrape(f"{url}/metrics"), scrape(worker_metrics)
    ok = dict(route=INFER_ROUTE, model="sleeper", status="200")
    assert value(gateway, "tandem_requests_total", **ok) - value(gateway_before, "tandem_requests_total", **ok) == 64
    # A caller's made-up names are not labels (each would be a new series): the model is "unknown", and a served
    # model's made-up version is too; a served model keeps its name where no worker answered (ready).
    assert value(gateway, "tandem_requests_total", route=INFER_ROUTE, model="unknown", status="404") == 1
    assert not [labels for _, labels in gateway if ("model", "nope") in labels or ("version", "nope-v") in labels]
    versioned = "/v2/models/{model}/versions/{version}/infer"
    assert value(gateway, "tandem_requests_total", route=versioned, model="sleeper", version="unknown") == 1
    assert value(gateway, "tandem_requests_total", route="/v2/models/{model}/ready", model="sleeper") == 1
    durations = value(gateway, "tandem_request_duration_seconds_count", **{k: ok[k] for k in ("route", "status")})
    assert durations >= 64
    assert value(gateway, "tandem_worker_call_duration_seconds_count", model="sleeper") >= 64
    assert value(gateway, "tandem_workers_live") == 1

    batches = value(worker, "tandem_batch_size_count", model="sleeper") - value(
        worker_before, "tandem_batch_size_count", model="sleeper"
    )
    rows = value(worker, "tandem_batch_size_sum", model="sleeper") - value(
        worker_before, "tandem_batch_size_sum", model="sleeper"
    )
    assert rows == 128 and 0 < batches < 64, "64 concurrent requests of 2 rows were not batched"
    assert value(worker, "tandem_worker_requests_total", model="sleeper", status="ok") >= 64
    assert value(worker, "tandem_queue_wait_seconds_count", model="sleeper") >= 64
    assert value(worker, "tandem_model_info", model="sleeper", alias="champion") == 1
    assert ("tandem_queue_depth", ()) in worker
    assert value(worker, "tandem_swaps_total", model="sleeper", result="rejected") == 0
