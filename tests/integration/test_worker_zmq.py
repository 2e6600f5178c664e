"""A real worker process, a real sqlite MLflow registry, real ZeroMQ sockets: the worker's wire behaviour."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import msgpack
import numpy as np
import pytest
import zmq

from tandem.common.wire import PROTOCOL_VERSION, InferRequest, Pong, Reply, Tensor
from tests.support.registry import TINY_FEATURES, TINY_INPUT, TINY_OUTPUT, TinyModel
from tests.support.workers import DealerClient, RunningWorker, model_stats, running_worker

BUDGET_MS = 5000.0
CLIENTS = 4
CONCURRENT_REQUESTS = 64
STOP_WITHIN_S = 5.0


def infer(
    x: np.ndarray, request_id: str = "r1", model: str = "tiny", version: str | None = None, budget_ms: float = BUDGET_MS
) -> InferRequest:
    return InferRequest(request_id, model, version, budget_ms, [Tensor.from_numpy(TINY_INPUT, x)])


def rows(count: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((count, TINY_FEATURES), dtype=np.float32)


def reply_to(client: DealerClient, message: InferRequest) -> Reply:
    reply = client.request(message)
    assert isinstance(reply, Reply)
    assert reply.request_id == message.request_id
    return reply


def assert_computed(reply: Reply, x: np.ndarray, tiny: TinyModel) -> None:
    assert reply.ok, reply
    (y,) = reply.outputs
    assert (y.name, y.datatype, y.shape) == (TINY_OUTPUT, "FP32", (x.shape[0], 2))
    np.testing.assert_allclose(y.to_numpy(), tiny.expected(x), rtol=1e-5, atol=1e-6)


@pytest.fixture(scope="module")
def worker(tiny_model: TinyModel, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningWorker]:
    home = tmp_path_factory.mktemp("worker")
    with running_worker(
        registry_uri=tiny_model.registry.uri, models=tiny_model.ref, home=home, log_path=home / "worker.log"
    ) as running:
        yield running


@pytest.fixture
def client(worker: RunningWorker) -> Iterator[DealerClient]:
    with worker.client() as dealer:
        yield dealer


def test_pong_describes_the_served_model(worker: RunningWorker) -> None:
    pong = worker.pong()
    assert pong.ready
    (described,) = pong.models
    assert {key: described[key] for key in ("name", "version", "aliases", "platform")} == {
        "name": "tiny",
        "version": "1",
        "aliases": ["champion"],
        "platform": "pytorch",
    }
    assert described["inputs"] == [{"name": "x", "datatype": "FP32", "shape": [-1, 4]}]
    assert described["outputs"] == [{"name": "y", "datatype": "FP32", "shape": [-1, 2]}]


@pytest.mark.parametrize("version", [None, "1", "champion"])
def test_infer_returns_the_module_output(client: DealerClient, tiny_model: TinyModel, version: str | None) -> None:
    x = rows(5, seed=1)
    reply = reply_to(client, infer(x, version=version))
    assert (reply.model, reply.version) == ("tiny", "1")
    assert_computed(reply, x, tiny_model)


def test_concurrent_requests_get_their_own_rows_and_share_batches(worker: RunningWorker, tiny_model: TinyModel) -> None:
    before = model_stats(worker.pong(), "tiny")
    clients = [worker.client() for _ in range(CLIENTS)]
    try:
        sent: dict[str, np.ndarray] = {}
        for index in range(CONCURRENT_REQUESTS):
            x = rows(1 + index % 4, seed=100 + index)
            request_id = f"c{index}"
            sent[request_id] = x
            clients[index % CLIENTS].send(infer(x, request_id))
        poller = zmq.Poller()
        for dealer in clients:
            poller.register(dealer.socket, zmq.POLLIN)
        replies: dict[str, Reply] = {}
        deadline = time.monotonic() + 10
        while len(replies) < CONCURRENT_REQUESTS and time.monotonic() < deadline:
            for dealer in clients:
                while dealer.socket.poll(0):
                    reply = dealer.recv()
                    assert isinstance(reply, Reply)
                    assert reply.request_id not in replies, "answered twice"
                    replies[reply.request_id] = reply
            poller.poll(100)
    finally:
        for dealer in clients:
            dealer.close()
    assert replies.keys() == sent.keys()
    for request_id, x in sent.items():
        assert_computed(replies[request_id], x, tiny_model)
    after = model_stats(worker.pong(), "tiny")
    assert after["requests"] - before["requests"] == CONCURRENT_REQUESTS
    assert after["rows"] - before["rows"] == sum(x.shape[0] for x in sent.values())
    batches = after["batches"] - before["batches"]
    assert batches < CONCURRENT_REQUESTS, "no batch held more than one request"


@pytest.mark.parametrize(
    ("model", "version", "message"),
    [
        ("nope", None, "model 'nope' is not served here"),
        ("tiny", "9", "model 'tiny' has no version '9' here"),
    ],
)
def test_unknown_model_or_version_is_not_found(
    client: DealerClient, model: str, version: str | None, message: str
) -> None:
    reply = reply_to(client, infer(rows(1, seed=2), model=model, version=version))
    assert (reply.status, reply.error) == ("not_found", message)


@pytest.mark.parametrize(
    ("x", "message"),
    [
        (np.zeros((2, TINY_FEATURES), np.int64), "input 'x' must be FP32, got INT64"),
        (np.zeros((2, 3), np.float32), "input 'x' must have shape [-1, 4], got [2, 3]"),
    ],
    ids=["dtype", "shape"],
)
def test_wrong_dtype_or_shape_is_a_bad_request(client: DealerClient, x: np.ndarray, message: str) -> None:
    reply = reply_to(client, infer(x))
    assert (reply.status, reply.error) == ("bad_request", message)


def test_wrong_input_name_is_a_bad_request(client: DealerClient) -> None:
    request = InferRequest("r1", "tiny", None, BUDGET_MS, [Tensor.from_numpy("z", rows(1, seed=3))])
    reply = reply_to(client, request)
    assert reply.status == "bad_request"
    assert "missing input 'x'" in reply.error
    assert "unexpected input 'z'" in reply.error


def _header(request_id: str, specs: list[list[object]]) -> bytes:
    header = {"v": PROTOCOL_VERSION, "k": "infer", "id": request_id, "m": "tiny", "ver": None, "b": BUDGET_MS}
    return msgpack.packb({**header, "tc": None, "o": None, "t": specs})


@pytest.mark.parametrize(
    ("frames", "request_id"),
    [
        ([os.urandom(64)], ""),
        ([_header("missing-frame", [["x", "FP32", [1, 4]]])], "missing-frame"),
        ([_header("short-frame", [["x", "FP32", [1, 4]]]), b"\x00" * 15], "short-frame"),
        ([b""], ""),
    ],
    ids=["random-bytes", "missing-frame", "wrong-length", "empty-header"],
)
def test_garbage_gets_a_bad_request_and_the_worker_keeps_serving(
    client: DealerClient, tiny_model: TinyModel, frames: list[bytes], request_id: str
) -> None:
    client.send_frames(frames)
    reply = client.recv()
    assert isinstance(reply, Reply)
    assert (reply.status, reply.request_id, reply.model) == ("bad_request", request_id, "")
    assert reply.error
    x = rows(2, seed=4)
    assert_computed(reply_to(client, infer(x, "after-garbage")), x, tiny_model)


def test_requested_outputs_are_checked(client: DealerClient) -> None:
    request = infer(rows(1, seed=5))
    request.outputs = ["logits"]
    reply = reply_to(client, request)
    assert (reply.status, reply.error) == ("bad_request", "model 'tiny' has no output 'logits'; it has 'y'")


def test_spent_budget_is_deadline_exceeded(client: DealerClient) -> None:
    reply = reply_to(client, infer(rows(1, seed=6), budget_ms=0))
    assert reply.status == "deadline_exceeded"


def test_replies_and_pongs_sent_to_a_worker_are_ignored(client: DealerClient, tiny_model: TinyModel) -> None:
    client.send(Reply("stray", "ok", "tiny"))
    client.send(Pong(1, "someone", True, 0, 0, []))
    x = rows(1, seed=7)
    assert_computed(reply_to(client, infer(x, "after-stray")), x, tiny_model)


@pytest.fixture
def small_worker(tiny_model: TinyModel, tmp_path: Path) -> Iterator[RunningWorker]:
    with running_worker(
        registry_uri=tiny_model.registry.uri,
        models=tiny_model.ref,
        home=tmp_path,
        log_path=tmp_path / "worker.log",
        max_queue_rows=4,
        max_batch_size=4,
    ) as running:
        yield running


def test_queue_overflow_is_overloaded(small_worker: RunningWorker) -> None:
    count = 200
    with small_worker.client() as dealer:
        for index in range(count):
            dealer.send(infer(rows(4, seed=index), f"o{index}"))
        statuses: dict[str, str] = {}
        for _ in range(count):
            reply = dealer.recv()
            assert isinstance(reply, Reply)
            assert reply.request_id not in statuses, "answered twice"
            statuses[reply.request_id] = reply.status
    assert set(statuses.values()) <= {"ok", "overloaded"}
    assert "overloaded" in statuses.values()
    assert "ok" in statuses.values()
    with small_worker.client() as dealer:
        too_big = reply_to(dealer, infer(rows(5, seed=0)))
    assert too_big.status == "bad_request"
    assert "queues at most 4" in too_big.error


def test_sigterm_stops_the_worker(small_worker: RunningWorker) -> None:
    popen = small_worker.process.popen
    popen.send_signal(signal.SIGTERM)
    try:
        code = popen.wait(STOP_WITHIN_S)
    except subprocess.TimeoutExpired:
        pytest.fail(f"worker still running {STOP_WITHIN_S} s after SIGTERM\n{small_worker.process.log_tail()}")
    assert code == 0, small_worker.process.log_tail()
    assert "stopped" in small_worker.process.log_tail()
