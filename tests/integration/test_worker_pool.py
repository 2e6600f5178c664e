"""The gateway's WorkerPool against scripted workers on real ZeroMQ sockets (no model, no HTTP)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable

import numpy as np
import pytest
import zmq
import zmq.asyncio

from tandem.common import wire
from tandem.common.errors import DeadlineExceeded, ModelUnavailable, NotFound, Overloaded
from tandem.common.send_queue import SendQueue
from tandem.gateway.deadlines import Deadline
from tandem.gateway.hedging import HedgePolicy
from tandem.gateway.worker_client import WorkerPool

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


MODEL = {"name": "m", "version": "1", "aliases": ["champion"], "platform": "pytorch", "inputs": [], "outputs": []}


class ScriptedWorker:
    """A ROUTER that answers pings and handles infers with ``behaviour`` (echo by default)."""

    def __init__(self, behaviour: str = "echo", delay_s: float = 0.3) -> None:
        self.context = zmq.asyncio.Context.instance()
        self.socket = self.context.socket(zmq.ROUTER)
        self.socket.setsockopt(zmq.LINGER, 0)
        port = self.socket.bind_to_random_port("tcp://127.0.0.1")
        self.endpoint = f"tcp://127.0.0.1:{port}"
        self.behaviour = behaviour
        self.delay_s = delay_s
        self.received: list[wire.Message] = []
        self.task: asyncio.Task[None] | None = None

    async def serve(self) -> None:
        while True:
            identity, *frames = await self.socket.recv_multipart()
            message = wire.decode(frames)
            self.received.append(message)
            if isinstance(message, wire.Ping):
                pong = wire.Pong(message.seq, "scripted", True, 0, 0, [MODEL])
                await self.socket.send_multipart([identity, *wire.encode(pong)])
            elif isinstance(message, wire.InferRequest) and self.behaviour == "echo":
                await self.answer(identity, message)
            elif isinstance(message, wire.InferRequest) and self.behaviour == "overloaded":
                refusal = wire.Reply(message.request_id, Overloaded.code, message.model, "1", [], "too busy")
                await self.socket.send_multipart([identity, *wire.encode(refusal)])
            elif isinstance(message, wire.InferRequest) and self.behaviour == "slow":
                asyncio.get_running_loop().call_later(
                    self.delay_s, lambda i=identity, m=message: asyncio.ensure_future(self.answer(i, m))
                )

    async def answer(self, identity: bytes, message: wire.InferRequest) -> None:
        reply = wire.Reply(message.request_id, "ok", message.model, "1", message.inputs)
        await self.socket.send_multipart([identity, *wire.encode(reply)])

    def start(self) -> None:
        self.task = asyncio.create_task(self.serve())

    async def kill(self) -> None:
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.task
        self.socket.close(linger=0)


@contextlib.asynccontextmanager
async def pool_of(
    *workers: ScriptedWorker, hedging: HedgePolicy | None = None, reply_delay_s: Callable[[], float] | None = None
) -> AsyncIterator[WorkerPool]:
    pool = WorkerPool(
        [w.endpoint for w in workers],
        ping_interval_s=0.05,
        silence_s=0.5,
        hedging=hedging,
        reply_delay_s=reply_delay_s,
    )
    await pool.start()
    try:
        assert await pool.wait_ready(5.0)
        yield pool
    finally:
        await pool.close()
        for worker in workers:
            await worker.kill()


def request(model: str = "m", version: str | None = None) -> wire.InferRequest:
    x = wire.Tensor.from_numpy("x", np.arange(4, dtype=np.float32))
    return wire.InferRequest("", model, version, 0.0, [x])


async def wait_for(condition: Callable[[], bool], timeout_s: float = 5.0) -> None:
    async with asyncio.timeout(timeout_s):
        while not condition():
            await asyncio.sleep(0.01)


def started(*behaviours: str) -> list[ScriptedWorker]:
    workers = [ScriptedWorker(b) for b in behaviours]
    for worker in workers:
        worker.start()
    return workers


async def test_a_request_is_answered_by_a_live_worker() -> None:
    async with pool_of(*started("echo")) as pool:
        reply = await pool.infer(request(), Deadline(2000))
        assert reply.ok and reply.version == "1"
        np.testing.assert_array_equal(reply.outputs[0].to_numpy(), np.arange(4, dtype=np.float32))
        assert pool.models()["m"]["1"]["aliases"] == ["champion"]


async def test_a_worker_is_sent_the_budget_left_after_the_gateways_own_reply_delay() -> None:
    worker = started("echo")[0]
    async with pool_of(worker, reply_delay_s=lambda: 0.3) as pool:
        assert (await pool.infer(request(), Deadline(2000))).ok
    (sent,) = [m for m in worker.received if isinstance(m, wire.InferRequest)]
    assert 1600 < sent.budget_ms <= 1700  # 2,000 ms less the 300 ms a reply waits in the gateway's loop


async def test_unknown_model_and_version_are_not_found() -> None:
    async with pool_of(*started("echo")) as pool:
        with pytest.raises(NotFound, match="'other'"):
            await pool.infer(request("other"), Deadline(2000))
        with pytest.raises(NotFound, match="'7'"):
            await pool.infer(request(version="7"), Deadline(2000))


async def test_a_silent_worker_costs_the_deadline_and_gets_a_cancel() -> None:
    worker = started("silent")[0]
    async with pool_of(worker) as pool:
        loop = asyncio.get_running_loop()
        began = loop.time()
        with pytest.raises(DeadlineExceeded):
            await pool.infer(request(), Deadline(200))
        assert loop.time() - began < 1.0
        await wait_for(lambda: any(isinstance(m, wire.Cancel) for m in worker.received))


async def test_a_dead_worker_fails_over_to_the_other_one() -> None:
    silent, echo = started("silent", "echo")
    async with pool_of(silent, echo) as pool:
        await wait_for(lambda: all(link.alive for link in pool.links))
        # Pin the first attempt to the silent worker by loading the echo one, then kill the silent one.
        outstanding = [asyncio.create_task(pool.infer(request(), Deadline(5000))) for _ in range(4)]
        await wait_for(lambda: sum(isinstance(m, wire.InferRequest) for m in silent.received) > 0)
        await silent.kill()
        replies = await asyncio.gather(*outstanding)
        assert all(r.ok for r in replies)


async def test_an_overloaded_refusal_is_retried_on_a_worker_no_busier() -> None:
    busy, idle = started("overloaded", "echo")
    async with pool_of(busy, idle) as pool:
        await wait_for(lambda: all(link.alive for link in pool.links))
        replies = [await pool.infer(request(), Deadline(2000)) for _ in range(8)]
        assert all(r.ok for r in replies)
        assert any(isinstance(m, wire.InferRequest) for m in busy.received)  # some went there first, and were retried


async def test_an_overloaded_refusal_is_not_retried_on_a_worker_holding_more_requests() -> None:
    slow, refusing = started("slow", "overloaded")
    slow.delay_s = 2.0
    async with pool_of(slow) as pool:
        held = [asyncio.create_task(pool.infer(request(), Deadline(5000))) for _ in range(3)]
        await wait_for(lambda: sum(isinstance(m, wire.InferRequest) for m in slow.received) == 3)
        pool.add_endpoint(refusing.endpoint)  # joins idle, so routing sends the next request to it
        await wait_for(lambda: len(pool.links) == 2 and all(link.alive and link.ready for link in pool.links))
        refused = await pool.infer(request(), Deadline(5000))  # at once, not queued behind the slow worker
        assert refused.status == Overloaded.code
        assert sum(isinstance(m, wire.InferRequest) for m in refusing.received) == 1
        assert sum(isinstance(m, wire.InferRequest) for m in slow.received) == 3
        assert all(r.ok for r in await asyncio.gather(*held))
        await refusing.kill()


async def test_no_live_worker_is_model_unavailable_at_once() -> None:
    worker = started("echo")[0]
    async with pool_of(worker) as pool:
        await worker.kill()
        await wait_for(lambda: not pool.ready)
        loop = asyncio.get_running_loop()
        began = loop.time()
        with pytest.raises(ModelUnavailable):
            await pool.infer(request(), Deadline(2000))
        assert loop.time() - began < 0.5


async def test_a_slow_first_attempt_is_hedged_to_the_other_worker_and_cancelled() -> None:
    slow, fast = started("slow", "echo")
    policy = HedgePolicy(models=None, fixed_delay_s=0.02, burst=100)
    async with pool_of(slow, fast, hedging=policy) as pool:
        await wait_for(lambda: all(link.alive for link in pool.links))
        loop = asyncio.get_running_loop()
        # Routing picks either idle worker at random: go on until the slow one got a request (each pick is a coin
        # toss, so ten requests left it unpicked once in ~1,000 runs, and a CI run failed so).
        for _ in range(40):
            began = loop.time()
            reply = await pool.infer(request(), Deadline(2000))
            assert reply.ok
            assert loop.time() - began < 0.25
            if any(isinstance(m, wire.InferRequest) for m in slow.received):
                break
        sent_to_slow = [m for m in slow.received if isinstance(m, wire.InferRequest)]
        assert sent_to_slow, "power of two choices never picked the slow worker"
        assert policy.hedges == len(sent_to_slow) == policy.hedges_won
        await wait_for(lambda: sum(isinstance(m, wire.Cancel) for m in slow.received) == len(sent_to_slow))


async def test_without_hedging_a_slow_worker_costs_its_full_delay() -> None:
    slow = started("slow")[0]
    async with pool_of(slow) as pool:
        loop = asyncio.get_running_loop()
        began = loop.time()
        assert (await pool.infer(request(), Deadline(2000))).ok
        assert loop.time() - began >= slow.delay_s


async def test_a_stalled_worker_is_passed_over_and_its_requests_hedge_on_the_reserve() -> None:
    stuck, fast = started("slow", "echo")
    stuck.delay_s = 60.0  # holds every request: a stall
    # No budget beyond the reserve: only a request held by a stalled worker may hedge.
    # A stall is 200 ms without an answer: ten times the fast worker's 10 ms, so a busy test machine does not make
    # the fast worker look stalled too (with 20 ms it did, and its requests hedged onto the stalled one).
    policy = HedgePolicy(models=None, fixed_delay_s=0.2, budget_ratio=0.0, burst=3.0, reserve=3.0)
    async with pool_of(stuck, fast, hedging=policy) as pool:
        await wait_for(lambda: all(link.alive for link in pool.links))
        stuck_link = next(link for link in pool.links if link.endpoint == stuck.endpoint)
        loop = asyncio.get_running_loop()
        while not any(isinstance(m, wire.InferRequest) for m in stuck.received):
            began = loop.time()
            assert (await pool.infer(request(), Deadline(2000))).ok
            assert loop.time() - began < 1.0, "the request on the stalled worker was not hedged"
        assert policy.hedges == 1
        # Keep one request stuck there so the worker holds work and shows no progress.
        held: dict[asyncio.Future[wire.Reply], object] = {}
        pool._send_attempt(request(), Deadline(5000), set(), held, hedge=False, link=stuck_link)
        for future in held:
            future.add_done_callback(lambda f: f.exception())  # failed when the pool closes
        await asyncio.sleep(0.3)  # past the 200 ms stall threshold
        sent_before = sum(isinstance(m, wire.InferRequest) for m in stuck.received)
        fast.behaviour, fast.delay_s = "slow", 0.01  # now it holds more requests than the stalled worker
        replies = await asyncio.gather(*(pool.infer(request(), Deadline(2000)) for _ in range(20)))
        assert all(reply.ok for reply in replies)
        assert sum(isinstance(m, wire.InferRequest) for m in stuck.received) == sent_before, (
            "routing chose a stalled worker while another could take the request"
        )


async def test_the_hedge_budget_stops_hedging() -> None:
    slow, fast = started("slow", "echo")
    slow.delay_s = 0.05
    policy = HedgePolicy(models=None, fixed_delay_s=0.005, budget_ratio=0.0, burst=1.0)
    async with pool_of(slow, fast, hedging=policy) as pool:
        await wait_for(lambda: all(link.alive for link in pool.links))
        await asyncio.gather(*(pool.infer(request(), Deadline(2000)) for _ in range(20)))
        assert policy.hedges == 1


async def test_requests_in_flight_together_share_sends_and_each_gets_its_own_reply(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    deferred = 0
    defer = SendQueue.defer

    def counting_defer(self: SendQueue, frames, token=None) -> None:
        nonlocal deferred
        deferred += 1
        defer(self, frames, token)

    monkeypatch.setattr(SendQueue, "defer", counting_defer)
    async with pool_of(*started("echo")) as pool:
        inputs = [np.full(4, i, dtype=np.float32) for i in range(32)]
        requests = [wire.InferRequest("", "m", None, 0.0, [wire.Tensor.from_numpy("x", x)]) for x in inputs]
        replies = await asyncio.gather(*(pool.infer(r, Deadline(5000)) for r in requests))
    assert deferred > 0  # sent in one turn of the loop: all but the first went with the others
    for x, reply in zip(inputs, replies, strict=True):
        assert reply.ok
        np.testing.assert_array_equal(reply.outputs[0].to_numpy(), x)
