"""One request's whole trip: HTTP -> gateway -> ZeroMQ -> worker -> gateway -> HTTP, with real processes."""

from __future__ import annotations

import asyncio
import os

import httpx
import numpy as np
import pytest
import zmq

from tandem.common import wire
from tandem.common.features import NUM_FEATURES
from tests.support.stack import Stack
from tests.support.workers import ping


def _ranker_in_process(registry_uri: str, version: str):
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    import mlflow
    import torch

    mlflow.set_tracking_uri(registry_uri)
    mlflow.set_registry_uri(registry_uri)
    module = mlflow.pytorch.load_model(f"models:/ranker/{version}").eval()

    def score(rows: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return module(torch.from_numpy(rows)).numpy()

    return score


def _infer_json(rows: np.ndarray, request_id: str = "r1") -> dict:
    return {
        "id": request_id,
        "inputs": [{"name": "features", "shape": list(rows.shape), "datatype": "FP32", "data": rows.ravel().tolist()}],
    }


def test_v2_infer_matches_the_registered_model_in_process(shared_stack: Stack) -> None:
    rows = np.random.default_rng(0).normal(size=(7, NUM_FEATURES)).astype(np.float32)
    answer = httpx.post(f"{shared_stack.url}/v2/models/ranker/infer", json=_infer_json(rows, "abc"), timeout=10)
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["model_name"] == "ranker"
    assert body["id"] == "abc"
    served = np.asarray(body["outputs"][0]["data"], dtype=np.float32)
    expected = _ranker_in_process(shared_stack.registry.uri, body["model_version"])(rows)
    np.testing.assert_allclose(served, expected.reshape(-1), rtol=1e-6, atol=1e-7)


def test_versioned_infer_reaches_that_version(shared_stack: Stack) -> None:
    meta = httpx.get(f"{shared_stack.url}/v2/models/ranker", timeout=10).json()
    version = meta["versions"][-1]
    rows = np.ones((2, NUM_FEATURES), np.float32)
    answer = httpx.post(
        f"{shared_stack.url}/v2/models/ranker/versions/{version}/infer", json=_infer_json(rows), timeout=10
    )
    assert answer.status_code == 200, answer.text
    assert answer.json()["model_version"] == version


def test_an_alias_in_the_path_names_the_version_it_points_to(shared_stack: Stack) -> None:
    url = shared_stack.url
    meta = httpx.get(f"{url}/v2/models/ranker/versions/champion", timeout=10)
    assert meta.status_code == 200, meta.text
    assert httpx.get(f"{url}/v2/models/ranker/versions/champion/ready", timeout=10).status_code == 200
    rows = np.ones((2, NUM_FEATURES), np.float32)
    answer = httpx.post(f"{url}/v2/models/ranker/versions/champion/infer", json=_infer_json(rows), timeout=10)
    assert answer.status_code == 200, answer.text
    assert answer.json()["model_version"] in meta.json()["versions"]
    missing = httpx.post(f"{url}/v2/models/ranker/versions/nightly/infer", json=_infer_json(rows), timeout=10)
    assert missing.status_code == 404 and "'nightly'" in missing.json()["error"]
    assert "champion" in missing.json()["error"]  # what is served, aliases included


def test_metadata_health_and_server_endpoints(shared_stack: Stack) -> None:
    url = shared_stack.url
    assert httpx.get(f"{url}/v2/health/live").status_code == 200
    assert httpx.get(f"{url}/v2/health/ready").status_code == 200
    server = httpx.get(f"{url}/v2").json()
    assert server["name"] == "tandem" and "binary_tensor_data" in server["extensions"]
    meta = httpx.get(f"{url}/v2/models/ranker").json()
    assert meta["name"] == "ranker"
    assert meta["inputs"] == [{"name": "features", "datatype": "FP32", "shape": [-1, NUM_FEATURES]}]
    assert meta["outputs"] == [{"name": "score", "datatype": "FP32", "shape": [-1]}]
    assert httpx.get(f"{url}/v2/models/ranker/ready").status_code == 200
    assert httpx.get(f"{url}/v2/models/nope/ready").status_code == 404


def test_tritonclient_with_its_defaults(shared_stack: Stack) -> None:
    import tritonclient.http as triton

    client = triton.InferenceServerClient(shared_stack.url.removeprefix("http://"))
    try:
        assert client.is_server_live() and client.is_server_ready()
        assert client.is_model_ready("echo")
        assert client.get_model_metadata("echo")["inputs"][0]["name"] == "x"
        x = np.arange(3 * 16, dtype=np.float32).reshape(3, 16)
        given = triton.InferInput("x", list(x.shape), "FP32")
        given.set_data_from_numpy(x)
        result = client.infer("echo", [given])
        np.testing.assert_array_equal(result.as_numpy("y"), x)
        asked_json = triton.InferRequestedOutput("y", binary_data=False)
        result = client.infer("echo", [given], outputs=[asked_json], request_id="t-1")
        np.testing.assert_array_equal(result.as_numpy("y"), x)
        assert result.get_response()["id"] == "t-1"
    finally:
        client.close()


async def _many_concurrent(url: str, count: int) -> list[tuple[np.ndarray, httpx.Response]]:
    limits = httpx.Limits(max_connections=count)
    async with httpx.AsyncClient(base_url=url, timeout=30, limits=limits) as client:
        inputs = [np.full((1 + i % 3, 4), float(i), np.float32) for i in range(count)]

        async def one(x: np.ndarray) -> tuple[np.ndarray, httpx.Response]:
            body = {"inputs": [{"name": "x", "shape": list(x.shape), "datatype": "FP32", "data": x.ravel().tolist()}]}
            return x, await client.post(
                "/v2/models/sleeper/infer", json=body, headers={"X-Request-Timeout-Ms": "20000"}
            )

        return await asyncio.gather(*(one(x) for x in inputs))


def _sleeper_stats(stack: Stack) -> list[dict]:
    stats = []
    for endpoint in stack.workers:
        pong = ping(endpoint)
        assert pong is not None
        stats += [m["stats"] for m in pong.models if m["name"] == "sleeper"]
    return stats


def test_concurrent_requests_are_batched_and_each_caller_gets_its_rows(shared_stack: Stack) -> None:
    results = asyncio.run(_many_concurrent(shared_stack.url, 96))
    for x, answer in results:
        assert answer.status_code == 200, answer.text
        output = answer.json()["outputs"][0]
        assert output["shape"] == [x.shape[0]]
        np.testing.assert_allclose(output["data"], x.sum(axis=1))
    assert max(s["max_batch_rows"] for s in _sleeper_stats(shared_stack)) > 3


@pytest.mark.parametrize(
    ("path", "body", "status", "needle"),
    [
        ("/v2/models/ranker/infer", b"{not json", 400, "JSON"),
        (
            "/v2/models/echo/infer",
            b'{"inputs":[{"name":"x","shape":[1,16],"datatype":"INT64","data":[' + b"1," * 15 + b"1]}]}",
            400,
            "FP32",
        ),
        (
            "/v2/models/echo/infer",
            b'{"inputs":[{"name":"x","shape":[2,3],"datatype":"FP32","data":[1,2,3,4,5,6]}]}',
            400,
            "shape",
        ),
        (
            "/v2/models/echo/infer",
            b'{"inputs":[{"name":"x","shape":[2,3],"datatype":"FP32","data":[1,2,3]}]}',
            400,
            "'x'",
        ),
        (
            "/v2/models/echo/infer",
            b'{"inputs":[{"name":"nope","shape":[1,16],"datatype":"FP32","data":[' + b"1," * 15 + b"1]}]}",
            400,
            "nope",
        ),
        ("/v2/models/unknown/infer", b'{"inputs":[]}', 404, "unknown"),
        ("/v2/models/echo/versions/999/infer", b'{"inputs":[]}', 404, "999"),
    ],
    ids=[
        "malformed-json",
        "wrong-datatype",
        "wrong-shape",
        "wrong-element-count",
        "unknown-input",
        "unknown-model",
        "unknown-version",
    ],
)
def test_bad_input_gets_a_4xx_naming_the_problem(
    shared_stack: Stack, path: str, body: bytes, status: int, needle: str
) -> None:
    answer = httpx.post(shared_stack.url + path, content=body, headers={"content-type": "application/json"})
    assert answer.status_code == status, answer.text
    assert needle in answer.json()["error"]


def test_oversize_body_is_refused_with_413(shared_stack: Stack) -> None:
    huge = b"[" + b"0," * (9 * 1024 * 1024) + b"0]"
    answer = httpx.post(f"{shared_stack.url}/v2/models/echo/infer", content=huge, timeout=30)
    assert answer.status_code == 413
    assert "limit" in answer.json()["error"]


def test_garbage_frames_to_a_worker_get_bad_request_and_it_keeps_serving(shared_stack: Stack) -> None:
    endpoint = next(iter(shared_stack.workers))
    sock = zmq.Context.instance().socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(endpoint)
    try:
        for garbage in ([b"\xff\x00garbage"], [b"not msgpack", b"x" * 10], [wire.encode(wire.Ping(1))[0], b"extra"]):
            sock.send_multipart(garbage)
            assert sock.poll(5000), "the worker did not answer a malformed message"
            reply = wire.decode(sock.recv_multipart())
            assert isinstance(reply, wire.Reply) and reply.status == "bad_request"
    finally:
        sock.close()
    assert ping(endpoint) is not None
    test_v2_infer_matches_the_registered_model_in_process(shared_stack)


def test_recommendations_are_ranked_and_filtered(shared_stack: Stack) -> None:
    answer = httpx.post(f"{shared_stack.url}/v1/recommendations", json={"user_id": "u00042", "k": 5}, timeout=10)
    assert answer.status_code == 200, answer.text
    body = answer.json()
    scores = [item["score"] for item in body["items"]]
    assert len(scores) == 5 and scores == sorted(scores, reverse=True)
    assert body["model"]["name"] == "ranker" and body["model"]["version"]
    assert body["degraded"] is False and body["request_id"]


def test_a_worker_killed_under_load_costs_no_request(make_stack) -> None:
    stack: Stack = make_stack(workers=2)
    victim = next(iter(stack.workers))

    async def load() -> list[int]:
        async with httpx.AsyncClient(base_url=stack.url, timeout=10) as client:
            body = {"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4]}]}

            async def one(i: int) -> int:
                await asyncio.sleep(i * 0.01)
                if i == 50:
                    stack.kill_worker(victim)
                answer = await client.post("/v2/models/sleeper/infer", json=body)
                return answer.status_code

            return await asyncio.gather(*(one(i) for i in range(200)))

    statuses = asyncio.run(load())
    assert statuses.count(200) == len(statuses), statuses


def test_a_lone_worker_killed_gives_503_before_the_deadline(make_stack) -> None:
    stack: Stack = make_stack(workers=1)
    stack.kill_worker(next(iter(stack.workers)))
    body = {"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4]}]}
    answer = httpx.post(f"{stack.url}/v2/models/sleeper/infer", json=body, headers={"X-Request-Timeout-Ms": "2000"})
    assert answer.status_code == 503, answer.text
    assert answer.elapsed.total_seconds() < 2.0
