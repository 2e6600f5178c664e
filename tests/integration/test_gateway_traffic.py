"""Aliases at the gateway: the worker pool over real ZeroMQ sockets, and the app's routes under their lifespan.

A scripted worker (a ROUTER that answers pings with a model table and echoes which version was asked for) shows
that ``WorkerPool`` routes by alias; the app, with its pool replaced by an in-process stand-in, shows that the
V2 and recommendation routes follow the traffic file and pick up a change without a restart.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import zmq
import zmq.asyncio

from tandem.common import wire
from tandem.common.features import FEATURE_NAMES
from tandem.common.settings import GatewaySettings
from tandem.common.wire import InferRequest, Reply, Tensor
from tandem.gateway.app import create_app
from tandem.gateway.deadlines import Deadline
from tandem.gateway.feature_store import InMemoryFeatureStore
from tandem.gateway.worker_client import WorkerPool

ALIASES = {"champion": "1", "challenger": "2"}
TABLE = [
    {"name": "m", "version": "1", "aliases": ["champion"], "platform": "pytorch", "inputs": [], "outputs": []},
    {"name": "m", "version": "2", "aliases": ["challenger"], "platform": "pytorch", "inputs": [], "outputs": []},
]


@asynccontextmanager
async def scripted_worker(table: list[dict[str, Any]]) -> AsyncIterator[str]:
    """A ROUTER answering pings with ``table`` and infers with the version its alias points to."""
    context = zmq.asyncio.Context()
    socket = context.socket(zmq.ROUTER)
    socket.setsockopt(zmq.LINGER, 0)
    port = socket.bind_to_random_port("tcp://127.0.0.1")

    async def serve() -> None:
        while True:
            identity, *frames = await socket.recv_multipart()
            message = wire.decode(frames)
            if isinstance(message, wire.Ping):
                reply: wire.Message = wire.Pong(message.seq, "scripted", True, 0, 0, table)
            elif isinstance(message, wire.InferRequest):
                version = ALIASES.get(message.version or "champion", message.version)
                reply = Reply(message.request_id, "ok", message.model, version, message.inputs)
            else:
                continue
            await socket.send_multipart([identity, *wire.encode(reply)])

    task = asyncio.create_task(serve())
    try:
        yield f"tcp://127.0.0.1:{port}"
    finally:
        task.cancel()
        socket.close(linger=0)
        context.term()


def test_the_pool_merges_aliases_and_routes_by_alias() -> None:
    async def scenario() -> None:
        other = [{**TABLE[0], "aliases": ["champion", "staging"]}]
        async with scripted_worker(TABLE) as first, scripted_worker(other) as second:
            pool = WorkerPool([first, second], ping_interval_s=0.05, silence_s=1.0)
            await pool.start()
            try:
                assert await pool.wait_ready(5.0)

                async def both_heard() -> None:
                    while sum(link.alive for link in pool.links) < 2:
                        await asyncio.sleep(0.05)

                await asyncio.wait_for(both_heard(), 5.0)
                table = pool.models()["m"]
                assert table["1"]["aliases"] == ["champion", "staging"]
                assert table["2"]["aliases"] == ["challenger"]
                for _ in range(5):  # only the first worker serves the challenger
                    link = pool.pick("m", "challenger", set())
                    assert link is not None and link.endpoint == first
                assert pool.pick("m", "cham", set()) is None
                x = Tensor.from_numpy("x", np.ones((1, 2), np.float32))
                reply = await pool.infer(InferRequest("", "m", "challenger", 0.0, [x]), Deadline(2000.0))
                assert (reply.status, reply.version) == ("ok", "2")
            finally:
                await pool.close()

    asyncio.run(scenario())


class AliasPool:
    """Stands in for the worker pool: champion is version 1 (scores times 1), challenger version 2 (times 2)."""

    def __init__(self) -> None:
        self.asked: list[str | None] = []

    def models(self) -> dict[str, dict[str, dict[str, Any]]]:
        return {name: {"1": {"aliases": ["champion"]}, "2": {"aliases": ["challenger"]}} for name in ("m", "ranker")}

    def check_served(self, model: str, version: str | None) -> None:
        return None

    async def infer(self, request: InferRequest, deadline: Deadline) -> Reply:
        self.asked.append(request.version)
        version = ALIASES.get(request.version or "champion", request.version or "1")
        x = request.inputs[0].to_numpy()
        if x.ndim == 2 and x.shape[1] == len(FEATURE_NAMES):
            x = x[:, 0].copy()
        return Reply("r", "ok", request.model, version, [Tensor.from_numpy("y", x * np.float32(version))])


def write(path: Path, models: dict[str, Any]) -> None:
    path.write_text(json.dumps({"models": models}))
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))  # a new mtime even on a coarse clock


def test_routes_follow_the_traffic_file_and_its_changes_without_a_restart(tmp_path: Path) -> None:
    config = tmp_path / "traffic.json"
    write(config, {"m": {"split": {"champion": 50, "challenger": 50}}, "ranker": {"split": {"challenger": 1}}})
    settings = GatewaySettings(home=tmp_path, workers="", traffic_config=str(config), traffic_check_interval_s=0.01)
    users = [f"user-{i}" for i in range(40)]
    body = {"inputs": [{"name": "x", "shape": [1, 2], "datatype": "FP32", "data": [1, 2]}]}

    async def versions(client: httpx.AsyncClient) -> dict[str, str]:
        seen = {}
        for user in users:
            answer = await client.post("/v2/models/m/infer", json=body, headers={"X-User-Id": user})
            assert answer.status_code == 200, answer.text
            seen[user] = answer.json()["model_version"]
        return seen

    async def scenario() -> None:
        products = [{"product_id": "p1", "category": "wool", "stock": 3, "rating": 5.0}]
        app = create_app(settings, features=InMemoryFeatureStore([], products))
        async with app.router.lifespan_context(app):
            pool = AliasPool()
            app.state.tandem.pool = pool
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://gateway") as client:
                first, again = await versions(client), await versions(client)
                assert first == again  # sticky
                assert set(first.values()) == {"1", "2"}
                pinned = await client.post("/v2/models/m/versions/1/infer", json=body, headers={"X-User-Id": "x"})
                assert pinned.json()["model_version"] == "1"  # an explicit version is never re-routed
                answer = await client.post("/v1/recommendations", json={"user_id": "u1"})
                assert answer.json()["model"] == {"name": "ranker", "version": "2"}
                write(config, {"m": {"split": {"challenger": 1}}})
                await asyncio.sleep(0.02)
                assert set((await versions(client)).values()) == {"2"}

    asyncio.run(scenario())
