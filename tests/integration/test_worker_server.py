"""``WorkerServer`` in process over real ZeroMQ sockets, with a model whose forward pass the test controls.

A gate module blocks inside ``forward`` until the test opens it, which makes "a batch is computing" a state the
test can hold; a fake clock makes deadlines pass without waiting.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch
import zmq
import zmq.asyncio

from tandem.common.settings import WorkerSettings
from tandem.common.wire import Cancel, InferRequest, Message, Ping, Pong, Reply, Tensor, decode, encode
from tandem.worker import server as server_module
from tandem.worker.latency import MIN_BATCHES
from tandem.worker.loader import LoadedModel, TensorSignature
from tandem.worker.server import WorkerServer
from tandem.worker.slots import ModelSlots

BUDGET_MS = 5000.0
WAIT_S = 5.0


class Gate(torch.nn.Module):
    """Doubles its input once opened; raises on negative input (a model that fails at serving time)."""

    def __init__(self) -> None:
        super().__init__()
        self.entered = threading.Event()
        self.opened = threading.Event()
        self.threads: list[str] = []  # where each forward pass ran

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.threads.append(threading.current_thread().name)
        self.entered.set()
        if not self.opened.wait(WAIT_S):
            raise TimeoutError("the test never opened the gate")
        if (x < 0).any():
            raise RuntimeError("negative input")
        return x * 2


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Harness:
    def __init__(self, server: WorkerServer, gate: Gate, clock: FakeClock, socket: zmq.asyncio.Socket) -> None:
        self.server, self.gate, self.clock, self.socket = server, gate, clock, socket

    async def send(self, message: Message) -> None:
        await self.socket.send_multipart(encode(message))

    async def recv(self) -> Message:
        frames = await asyncio.wait_for(self.socket.recv_multipart(), WAIT_S)
        return decode(frames)

    async def sync(self) -> Pong:
        """Ping and return the pong: everything sent before has been handled by then (one connection, in order)."""
        await self.send(Ping(seq=7))
        while True:
            message = await self.recv()
            if isinstance(message, Pong):
                return message

    async def batch_is_computing(self) -> None:
        if not await asyncio.to_thread(self.gate.entered.wait, WAIT_S):
            raise TimeoutError("no batch started")


def request(request_id: str, value: float, rows: int = 1, budget_ms: float = BUDGET_MS) -> InferRequest:
    x = np.full((rows, 2), value, dtype=np.float32)
    return InferRequest(request_id, "gate", None, budget_ms, [Tensor.from_numpy("x", x)])


def run_with_server(
    tmp_path: Path,
    scenario: Callable[[Harness], Awaitable[None]],
    *,
    ready: bool = True,
    batch_cap: int | None = None,
    **settings_values: float,
) -> None:
    gate, clock = Gate(), FakeClock()
    model = LoadedModel(
        name="gate",
        version="3",
        aliases=["live"],
        module=gate,
        device=torch.device("cpu"),
        inputs=[TensorSignature("x", "FP32", (-1, 2))],
        outputs=[TensorSignature("y", "FP32", (-1, 2))],
        nbytes=0,
        batch_cap=batch_cap,
    )
    slots = ModelSlots()
    slots.add(model, "live")
    settings = WorkerSettings(
        bind="tcp://127.0.0.1:0", models="gate@live", home=tmp_path, worker_id="w1", **settings_values
    )

    async def main() -> None:
        server = WorkerServer(settings, device=torch.device("cpu"), slots=slots, clock=clock)
        await server.start()
        server.ready = ready
        context = zmq.asyncio.Context()
        socket = context.socket(zmq.DEALER)
        socket.setsockopt(zmq.LINGER, 0)
        socket.connect(server.endpoint)
        try:
            await scenario(Harness(server, gate, clock, socket))
        finally:
            gate.opened.set()
            socket.close(linger=0)
            context.term()
            await server.close()

    asyncio.run(main())


def test_binding_port_zero_exposes_the_real_endpoint(tmp_path: Path) -> None:
    async def scenario(h: Harness) -> None:
        assert h.server.endpoint.startswith("tcp://127.0.0.1:")
        assert not h.server.endpoint.endswith(":0")
        pong = await h.sync()
        assert (pong.worker_id, pong.ready, pong.queued_rows, pong.inflight) == ("w1", True, 0, 0)
        assert [m["version"] for m in pong.models] == ["3"]

    run_with_server(tmp_path, scenario)


def test_requests_before_ready_are_model_unavailable(tmp_path: Path) -> None:
    async def scenario(h: Harness) -> None:
        await h.send(request("early", 1.0))
        reply = await h.recv()
        assert isinstance(reply, Reply)
        assert (reply.status, reply.error) == ("model_unavailable", "worker is still loading its models")
        assert not (await h.sync()).ready

    run_with_server(tmp_path, scenario, ready=False)


def test_arrivals_during_a_batch_form_the_next_batch_and_cancel_drops_one(tmp_path: Path) -> None:
    async def scenario(h: Harness) -> None:
        await h.send(request("first", 1.0))
        await h.batch_is_computing()
        await h.send(request("second", 2.0, rows=2))
        await h.send(request("dropped", 3.0, rows=3))
        await h.send(Cancel("dropped"))
        await h.send(request("third", 4.0, rows=4))
        pong = await h.sync()
        assert (pong.queued_rows, pong.inflight) == (6, 3)  # second + third queued; first computing
        h.gate.opened.set()
        replies = {}
        while len(replies) < 3:
            reply = await h.recv()
            assert isinstance(reply, Reply)
            replies[reply.request_id] = reply
        assert set(replies) == {"first", "second", "third"}
        for request_id, value, rows in (("first", 1.0, 1), ("second", 2.0, 2), ("third", 4.0, 4)):
            (y,) = replies[request_id].outputs
            np.testing.assert_array_equal(y.to_numpy(), np.full((rows, 2), value * 2, np.float32))
        pong = await h.sync()  # a reply to "dropped" would have arrived before this pong
        assert (pong.queued_rows, pong.inflight) == (0, 0)
        (stats,) = [m["stats"] for m in pong.models]
        assert stats == {"batches": 2, "requests": 3, "rows": 7, "max_batch_rows": 6}
        assert h.server.stats.histogram == {1: 1, 6: 1}

    run_with_server(tmp_path, scenario)


def test_a_models_batch_cap_from_its_profile_bounds_the_batches_it_forms(tmp_path: Path) -> None:
    async def scenario(h: Harness) -> None:
        await h.send(request("first", 1.0))
        await h.batch_is_computing()
        for index in range(5):
            await h.send(request(f"queued{index}", 2.0))
        pong = await h.sync()
        assert pong.models[0]["batch_cap"] == 2
        h.gate.opened.set()
        for _ in range(6):
            assert isinstance(await h.recv(), Reply)
        assert h.server.stats.histogram == {1: 2, 2: 2}  # five queued rows run as 2 + 2 + 1, not as one batch

    run_with_server(tmp_path, scenario, batch_cap=2)


def test_deadline_passing_in_the_queue_is_answered_without_computing(tmp_path: Path) -> None:
    async def scenario(h: Harness) -> None:
        await h.send(request("busy", 1.0))
        await h.batch_is_computing()
        await h.send(request("late", 1.0, budget_ms=50))
        await h.sync()
        h.clock.now += 1.0
        h.gate.opened.set()
        statuses = {}
        while len(statuses) < 2:
            reply = await h.recv()
            assert isinstance(reply, Reply)
            statuses[reply.request_id] = reply.status
        assert statuses == {"busy": "ok", "late": "deadline_exceeded"}
        (stats,) = [m["stats"] for m in (await h.sync()).models]
        assert stats["requests"] == 1

    run_with_server(tmp_path, scenario)


async def _one_batch_computing_at_known_speed(h: Harness) -> None:
    """Teach the latency model that batches of ``gate`` take 0.1 s + 10 ms a row, then hold a 1-row batch."""
    for _ in range(4):
        for rows in (1, 10, 40):
            h.server._latency.observe(("gate", "3"), rows, 0.1 + 0.01 * rows)
    await h.send(request("busy", 1.0))
    await h.batch_is_computing()


async def _statuses(h: Harness, count: int) -> dict[str, str]:
    """The status of each of the next ``count`` replies, by request id."""
    statuses = {}
    while len(statuses) < count:
        reply = await h.recv()
        assert isinstance(reply, Reply)
        statuses[reply.request_id] = reply.status
    return statuses


def test_admission_counts_a_newcomers_batch_as_full_and_sized_by_its_budget(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Batches of ``gate`` are taught to take 0.1 s + 10 ms a row; one 1-row batch computes, 10 rows queue.

    A 600 ms newcomer gets batches of at most 10 rows (a third of its budget): the queued 10 fill one and its
    own, filled by later arrivals, is a second, so 110 + 2 x 200 = 510 ms, over 600 ms with a 1.25 margin:
    refused. Counting only its own row (the queue as one batch, then 110 ms for itself, 420 ms) would have
    admitted it. A 700 ms newcomer gets 13-row batches: 110 + 230 = 340 ms, admitted. The margin is pinned at
    1.25 here: with the served one (a half) this rule and the own-row count agree at every budget.
    """
    monkeypatch.setattr(server_module, "SHED_SAFETY_FACTOR", 1.25)

    async def scenario(h: Harness) -> None:
        await _one_batch_computing_at_known_speed(h)
        await h.send(request("queued", 1.0, rows=10))
        await h.send(request("tight", 1.0, budget_ms=600))
        reply = await h.recv()
        assert isinstance(reply, Reply) and reply.request_id == "tight"
        assert reply.status == "overloaded" and "too busy" in (reply.error or "")
        await h.send(request("roomy", 1.0, budget_ms=700))
        pong = await h.sync()
        assert pong.queued_rows == 11
        h.gate.opened.set()
        assert await _statuses(h, 3) == {"busy": "ok", "queued": "ok", "roomy": "ok"}

    run_with_server(tmp_path, scenario)


def test_admission_keeps_half_of_a_newcomers_budget_in_reserve(tmp_path: Path) -> None:
    """Batches of ``gate`` take 0.1 s + 10 ms a row; one 1-row batch computes (110 ms left), nothing queues.

    A newcomer's own batch (counted full, 0.1 s + 10 ms a row, as many rows as compute in a third of its budget)
    after the one in flight: with 600 ms, 10-row batches, 110 + 200 = 310 ms, over half its budget: refused,
    though it would have made its deadline. With 700 ms, 13-row batches, 110 + 230 = 340 ms: admitted.
    """

    async def scenario(h: Harness) -> None:
        await _one_batch_computing_at_known_speed(h)
        await h.send(request("half", 1.0, budget_ms=600))
        reply = await h.recv()
        assert isinstance(reply, Reply) and reply.request_id == "half"
        assert reply.status == "overloaded" and "expected 310 ms" in (reply.error or "")
        await h.send(request("roomy", 1.0, budget_ms=700))
        assert (await h.sync()).queued_rows == 1
        h.gate.opened.set()
        assert await _statuses(h, 2) == {"busy": "ok", "roomy": "ok"}

    run_with_server(tmp_path, scenario)


def test_a_failing_batch_is_answered_internal_and_serving_goes_on(tmp_path: Path) -> None:
    async def scenario(h: Harness) -> None:
        h.gate.opened.set()
        await h.send(request("bad", -1.0))
        reply = await h.recv()
        assert isinstance(reply, Reply)
        assert (reply.request_id, reply.status, reply.error) == ("bad", "internal", "internal server error")
        await h.send(request("good", 1.0))
        reply = await h.recv()
        assert isinstance(reply, Reply)
        assert (reply.request_id, reply.status, reply.version) == ("good", "ok", "3")
        assert (await h.sync()).inflight == 0

    run_with_server(tmp_path, scenario)


def test_requested_outputs_only(tmp_path: Path) -> None:
    async def scenario(h: Harness) -> None:
        h.gate.opened.set()
        message = request("some", 1.0)
        message.outputs = ["y"]
        await h.send(message)
        reply = await h.recv()
        assert isinstance(reply, Reply)
        assert [t.name for t in reply.outputs] == ["y"]

    run_with_server(tmp_path, scenario)


@pytest.mark.parametrize("version", ["3", "live", None])
def test_versions_and_aliases_resolve(tmp_path: Path, version: str | None) -> None:
    async def scenario(h: Harness) -> None:
        h.gate.opened.set()
        message = request("v", 1.0)
        message.version = version
        await h.send(message)
        reply = await h.recv()
        assert isinstance(reply, Reply)
        assert (reply.status, reply.version) == ("ok", "3")

    run_with_server(tmp_path, scenario)


@pytest.mark.parametrize("inline_compute_ms", [0.0, 1.0])
def test_batches_known_to_be_short_run_on_the_event_loop(tmp_path: Path, inline_compute_ms: float) -> None:
    async def scenario(h: Harness) -> None:
        h.gate.opened.set()
        for i in range(30):  # the fake clock makes every batch take 0 s once the latency model has seen a few
            await h.send(request(f"r{i}", float(i)))
            reply = await h.recv()
            assert isinstance(reply, Reply) and reply.ok
            np.testing.assert_array_equal(reply.outputs[0].to_numpy(), np.full((1, 2), 2.0 * i, np.float32))
        assert h.gate.threads[0].startswith("tandem-inference"), "no prediction yet: the inference thread"
        expected = threading.current_thread().name if inline_compute_ms else h.gate.threads[0]
        assert h.gate.threads[-1] == expected

    run_with_server(tmp_path, scenario, inline_compute_ms=inline_compute_ms)


def test_the_latency_model_learns_compute_time_not_the_hand_off(tmp_path: Path) -> None:
    """A light model whose first batches ran on the inference thread comes back to the loop however slow the
    hand-off was: only the time inside ``run_batch`` is learned."""

    async def scenario(h: Harness) -> None:
        clock = h.clock

        class SlowHandOff(ThreadPoolExecutor):
            def submit(self, fn, /, *args, **kwargs):  # type: ignore[no-untyped-def]
                clock.now += 0.05  # a hand-off 50x longer than the inline bound, in the fake clock's time
                return super().submit(fn, *args, **kwargs)

        h.server._executor = SlowHandOff(max_workers=1, thread_name_prefix="tandem-inference")
        h.gate.opened.set()
        for i in range(MIN_BATCHES + 3):
            await h.send(request(f"r{i}", float(i)))
            reply = await h.recv()
            assert isinstance(reply, Reply) and reply.ok
        assert all(name.startswith("tandem-inference") for name in h.gate.threads[:MIN_BATCHES])
        assert h.gate.threads[-1] == threading.current_thread().name
        assert h.server._latency.predict(("gate", "3"), 1) == 0.0

    run_with_server(tmp_path, scenario, inline_compute_ms=1.0)
