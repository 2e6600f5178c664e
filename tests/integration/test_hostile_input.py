"""A real worker and a real gateway survive 10,000 hostile inputs each, then still answer correctly.

The worker gets random multipart messages over ZeroMQ (random bytes, msgpack headers with random fields,
valid messages cut short or padded, frames past its frame cap); the gateway gets random HTTP requests (random
methods, paths, headers and bodies, valid bodies mangled) with bounded concurrency. Inputs come from a seeded
``random.Random``, so a failure reproduces.
"""

from __future__ import annotations

import asyncio
import json
import random
import sys
import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote

import httpx
import msgpack
import numpy as np
import pytest
import zmq

from tandem.common import wire
from tandem.common.datatypes import DATATYPES
from tandem.common.wire import InferRequest, Reply, Tensor
from tests.support.ports import LOCALHOST, free_port
from tests.support.processes import Process, started, wait_until
from tests.support.registry import TINY_FEATURES, TinyModel
from tests.support.workers import RunningWorker, running_worker

HOSTILE_COUNT = 10_000
SEED = 20240609
MAX_TENSOR_BYTES = 64 * 1024
FRAME_CAP = 2 * MAX_TENSOR_BYTES
CONCURRENCY = 32
HTTP_TIMEOUT_S = 10.0
DRAIN_EVERY = 200
READY_TIMEOUT_S = 60.0
METHODS = ["POST"] * 6 + ["GET"] * 2 + ["PUT", "DELETE", "PATCH", "OPTIONS", "HEAD"]  # mostly what routes take
HEADER_NAMES = [
    "content-type",
    "x-request-timeout-ms",
    "inference-header-content-length",
    "authorization",
    "x-request-id",
    "accept",
    "x-random",
    "transfer-encoding-ish",
]


@pytest.fixture(scope="module")
def worker(tiny_model: TinyModel, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningWorker]:
    logs = tmp_path_factory.mktemp("hostile")
    with running_worker(
        registry_uri=tiny_model.registry.uri,
        models=tiny_model.ref,
        home=logs,
        log_path=logs / "worker.log",
        max_tensor_bytes=MAX_TENSOR_BYTES,
        torch_threads=1,
    ) as running:
        yield running


@pytest.fixture(scope="module")
def gateway(worker: RunningWorker, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Process]]:
    logs = tmp_path_factory.mktemp("hostile-gateway")
    port = free_port()
    url = f"http://{LOCALHOST}:{port}"
    argv = [sys.executable, "-m", "tandem", "gateway", "--home", str(logs), "--port", str(port)]
    env = {"TANDEM_WORKERS": worker.endpoint, "TANDEM_MAX_BODY_BYTES": str(MAX_TENSOR_BYTES)}
    with started(argv, log_path=logs / "gateway.log", env=env) as process:

        def ready() -> bool:
            try:
                return httpx.get(f"{url}/v2/health/ready", timeout=1.0).status_code == 200
            except httpx.HTTPError:
                return False

        wait_until(ready, what="ready gateway", timeout_s=READY_TIMEOUT_S, process=process)
        yield url, process


def _x(rows: int = 3) -> np.ndarray:
    return np.linspace(-1, 1, rows * TINY_FEATURES, dtype=np.float32).reshape(rows, TINY_FEATURES)


# ------------------------------------------------------------------------------------------------- worker


def _random_value(rng: random.Random, depth: int = 0) -> Any:
    choice = rng.randrange(8 if depth < 2 else 5)
    if choice == 0:
        return None
    if choice == 1:
        return rng.choice([True, False, 0, -1, 2**63 - 1, -(2**63), 1.5, float("nan"), float("inf")])
    if choice == 2:
        return "".join(chr(rng.randrange(0x20, 0x2FF)) for _ in range(rng.randrange(6)))
    if choice == 3:
        return rng.randbytes(rng.randrange(6))
    if choice == 4:
        return rng.choice(["infer", "ping", "pong", "reply", "cancel", "FP32", "BYTES", "tiny"])
    if choice == 5:
        return [_random_value(rng, depth + 1) for _ in range(rng.randrange(4))]
    if choice == 6:
        return [rng.choice(["x", ""]), rng.choice(sorted(DATATYPES)), [rng.randrange(-2, 5) for _ in range(2)]]
    return {rng.choice(["v", "k", "id", "m", "t", "b", "n", "o"]): _random_value(rng, depth + 1) for _ in range(3)}


def _hostile_frames(rng: random.Random, valid: list[list[bytes]]) -> list[bytes]:
    kind = rng.randrange(4)
    if kind == 0:  # random bytes
        return [rng.randbytes(rng.randrange(64)) for _ in range(rng.randrange(1, 4))]
    if kind == 1:  # a msgpack header with random fields
        header = {"v": rng.choice([1, 1, 2]), "k": rng.choice(["infer", "ping", "cancel", "pong", "x"])}
        header.update({rng.choice(["id", "m", "ver", "b", "t", "o", "tc", "n"]): _random_value(rng) for _ in range(5)})
        return [msgpack.packb(header), *(rng.randbytes(rng.randrange(48)) for _ in range(rng.randrange(3)))]
    frames = [bytes(frame) for frame in rng.choice(valid)]
    index = rng.randrange(len(frames))
    if kind == 2:  # a valid message cut short
        frames[index] = frames[index][: rng.randrange(len(frames[index]) + 1)]
    else:  # a valid message with bytes flipped or frames added
        data = bytearray(frames[index])
        for _ in range(rng.randrange(1, 4)):
            if data:
                data[rng.randrange(len(data))] = rng.randrange(256)
        frames[index] = bytes(data)
        frames += [rng.randbytes(8)] * rng.randrange(2)
    return frames


def _drain(socket: zmq.Socket) -> int:
    count = 0
    while socket.poll(0):
        socket.recv_multipart()
        count += 1
    return count


def _infer_correctly(endpoint: str, tiny_model: TinyModel) -> None:
    x = _x()
    context = zmq.Context()
    dealer = context.socket(zmq.DEALER)
    dealer.setsockopt(zmq.LINGER, 0)
    dealer.connect(endpoint)
    try:
        dealer.send_multipart(
            wire.encode(InferRequest("after-the-storm", tiny_model.name, None, 5000.0, [Tensor.from_numpy("x", x)]))
        )
        deadline = time.monotonic() + HTTP_TIMEOUT_S
        while time.monotonic() < deadline:
            if not dealer.poll(1000):
                continue
            reply = wire.decode(dealer.recv_multipart())
            if isinstance(reply, Reply) and reply.request_id == "after-the-storm":
                assert reply.ok, reply.error
                np.testing.assert_allclose(reply.outputs[0].to_numpy(), tiny_model.expected(x), rtol=1e-6)
                return
        raise AssertionError("the worker did not answer a valid request after the hostile input")
    finally:
        dealer.close(linger=0)
        context.term()


def test_a_worker_survives_10000_hostile_messages(worker: RunningWorker, tiny_model: TinyModel) -> None:
    rng = random.Random(SEED)
    x = Tensor.from_numpy("x", _x(2))
    valid = [
        wire.encode(InferRequest("r", tiny_model.name, None, 1000.0, [x])),
        wire.encode(wire.Ping(1)),
        wire.encode(wire.Cancel("r")),
        wire.encode(Reply("r", "ok", "tiny", "1", [x])),
    ]
    valid = [[bytes(memoryview(frame)) for frame in frames] for frames in valid]
    context = zmq.Context()
    dealer = context.socket(zmq.DEALER)
    dealer.setsockopt(zmq.LINGER, 0)
    dealer.setsockopt(zmq.SNDHWM, 0)
    dealer.connect(worker.endpoint)
    answered = 0
    try:
        for index in range(HOSTILE_COUNT):
            dealer.send_multipart(_hostile_frames(rng, valid))
            if index % DRAIN_EVERY == 0:
                answered += _drain(dealer)
        deadline = time.monotonic() + HTTP_TIMEOUT_S
        while time.monotonic() < deadline and dealer.poll(500):
            answered += _drain(dealer)
    finally:
        dealer.close(linger=0)
        context.term()
    assert answered > HOSTILE_COUNT // 2  # malformed messages are answered bad_request, not dropped
    # Frames past the cap cost the sender its connection, before the worker allocates them.
    oversize = zmq.Context()
    big = oversize.socket(zmq.DEALER)
    big.setsockopt(zmq.LINGER, 0)
    big.connect(worker.endpoint)
    try:
        for _ in range(3):
            big.send_multipart([wire.encode(wire.Ping(1))[0], b"\0" * (FRAME_CAP + 1)])
        assert not big.poll(500)
    finally:
        big.close(linger=0)
        oversize.term()
    assert worker.process.alive()
    assert worker.pong().ready
    _infer_correctly(worker.endpoint, tiny_model)


# ------------------------------------------------------------------------------------------------ gateway


def _random_path(rng: random.Random, model: str) -> str:
    segment = "".join(rng.choice("abc%/.-_~?#&=;xyz0123456789\u00e9\u2603") for _ in range(rng.randrange(1, 12)))
    return rng.choice(
        [
            f"/v2/models/{model}/infer",
            f"/v2/models/{model}/infer",
            f"/v2/models/{model}/infer",
            f"/v2/models/{model}/versions/1/infer",
            f"/v2/models/{model}/versions/{segment}/infer",
            f"/v2/models/{segment}/infer",
            f"/v2/models/{model}",
            f"/v2/models/{model}/ready",
            "/v1/recommendations",
            "/v2",
            "/v2/health/ready",
            f"/{segment}",
            f"/v2/models/{model}/infer?version={segment}",
            "/" + "a" * rng.choice([1, 100, 20000]),
        ]
    )


def _random_infer_json(rng: random.Random) -> Any:
    shape = [rng.choice([0, 1, 2, 3, 4, -1, 2**31, 2**62]) for _ in range(rng.randrange(0, 4))]
    datatype = rng.choice([*sorted(DATATYPES), "FP8", 7, None])
    data: Any = [rng.choice([0, 1.5, -3, True, "s", None, [1, 2], 1e308, 2**70]) for _ in range(rng.randrange(12))]
    tensor: dict[str, Any] = {"name": rng.choice(["x", "", "y", 5]), "shape": shape, "datatype": datatype}
    if rng.random() < 0.3:
        tensor["parameters"] = {"binary_data_size": rng.choice([0, 16, -1, "x", 2**40])}
    else:
        tensor["data"] = data
    body: dict[str, Any] = {"inputs": rng.choice([[tensor], [], tensor, None, [tensor, tensor]])}
    if rng.random() < 0.3:
        body["outputs"] = rng.choice([[{"name": "y"}], [{"name": "y", "parameters": {"binary_data": True}}], "y"])
    if rng.random() < 0.2:
        body["id"] = rng.choice(["a" * 1000, 5, None, "ok"])
    return body


def _json(value: Any) -> bytes:
    return json.dumps(value).encode()  # the stdlib writes integers past 64 bits, which orjson refuses


def _random_body(rng: random.Random) -> bytes | None:
    kind = rng.randrange(6)
    if kind == 0:
        return None
    if kind == 1:
        return rng.randbytes(rng.randrange(2000))
    if kind == 2:
        valid = {"inputs": [{"name": "x", "shape": [2, TINY_FEATURES], "datatype": "FP32", "data": list(range(8))}]}
        raw = _json(valid)
        return raw[: rng.randrange(len(raw) + 1)]
    if kind == 3:
        return _json(
            {
                "user_id": rng.choice(["u1", "", "x" * 500, 5]),
                "candidates": rng.choice([None, [], ["p1"] * 3000, [1]]),
                "k": rng.choice([0, 5, -1, 10**9]),
            }
        )
    if kind == 4:  # the binary extension with a random split
        return _json(_random_infer_json(rng)) + rng.randbytes(rng.randrange(64))
    return _json(_random_infer_json(rng))


def _random_headers(rng: random.Random) -> dict[str, bytes]:
    headers = {}
    for _ in range(rng.randrange(4)):
        name = rng.choice(HEADER_NAMES)
        value = rng.choice(
            [
                b"application/json",
                b"application/octet-stream",
                str(rng.choice([0, 1, -5, 1e-9, 10**12, 35, 100])).encode(),
                b"Bearer " + rng.randbytes(8).hex().encode(),
                bytes(rng.randrange(0x21, 0x7F) for _ in range(rng.randrange(40))),  # no edge spaces (h11)
                b"x" * rng.choice([10, 10, 20000]),
            ]
        )
        headers[name] = value
    return headers


async def _storm(url: str, model: str, rng: random.Random) -> dict[int, int]:
    statuses: dict[int, int] = {}
    semaphore = asyncio.Semaphore(CONCURRENCY)
    limits = httpx.Limits(max_connections=CONCURRENCY, max_keepalive_connections=CONCURRENCY)
    requests = [
        (rng.choice(METHODS), _random_path(rng, model), _random_headers(rng), _random_body(rng))
        for _ in range(HOSTILE_COUNT)
    ]
    async with httpx.AsyncClient(base_url=url, timeout=HTTP_TIMEOUT_S, limits=limits) as client:

        async def one(method: str, path: str, headers: dict[str, bytes], body: bytes | None) -> None:
            async with semaphore:
                try:
                    target = httpx.URL(url).copy_with(raw_path=quote(path, safe="/%?&=;~-._").encode())
                    answer = await client.request(method, target, headers=headers, content=body)
                    status = answer.status_code
                    if status >= 400 and method != "HEAD" and status != 431:
                        assert answer.json()["error"], (method, path, answer.text)
                except (httpx.RemoteProtocolError, httpx.ReadError):
                    status = -1  # the server closed a connection it could not parse: allowed
                statuses[status] = statuses.get(status, 0) + 1

        await asyncio.gather(*(one(*request) for request in requests))
    return statuses


def test_a_gateway_survives_10000_hostile_requests(gateway: tuple[str, Process], tiny_model: TinyModel) -> None:
    url, process = gateway
    statuses = asyncio.run(_storm(url, tiny_model.name, random.Random(SEED)))
    assert sum(statuses.values()) == HOSTILE_COUNT
    server_errors = {status: n for status, n in statuses.items() if status >= 500 and status != 504}
    assert not server_errors, (statuses, process.log_tail())
    assert statuses.get(-1, 0) < HOSTILE_COUNT // 100, statuses
    assert process.alive()
    x = _x()
    body = {"inputs": [{"name": "x", "shape": list(x.shape), "datatype": "FP32", "data": x.ravel().tolist()}]}
    answer = httpx.post(f"{url}/v2/models/{tiny_model.name}/infer", json=body, timeout=HTTP_TIMEOUT_S)
    assert answer.status_code == 200, answer.text
    output = np.asarray(answer.json()["outputs"][0]["data"], np.float32).reshape(3, -1)
    np.testing.assert_allclose(output, tiny_model.expected(x), rtol=1e-6)
