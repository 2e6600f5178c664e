"""Releases with real processes: a gateway and a worker over a sqlite MLflow registry, under steady HTTP load.

Versions of ``Scale`` differ in their factor, so every answer tells which version computed it and whether it is
exactly that version's output. The registry is the only thing the tests touch to release: ``tandem models
promote``/``rollback`` (their functions), and the traffic file for splits.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import numpy as np
import pytest

from tandem import models_cli
from tests.support.lifecycle import SCALE, WIDTH, lifecycle, register_scale, register_unloadable, scaled
from tests.support.registry import Registry, create_registry
from tests.support.stack import Registry as StackRegistry
from tests.support.stack import Stack
from tests.support.workers import ping

CONCURRENCY = 16
SWAP_TIMEOUT_S = 30.0
REQUEST_TIMEOUT_MS = "10000"
WORKER_ENV = {"TANDEM_POLL_INTERVAL_S": "0.2"}


@dataclass
class LifecycleStack:
    stack: Stack
    registry: Registry
    worker: str
    traffic_file: Path
    factors: dict[str, float] = field(default_factory=dict)

    def log(self) -> str:
        return "".join(path.read_text(errors="replace") for path in self.stack.logs.glob("worker-*.log"))

    def set_traffic(self, models: dict) -> None:
        self.traffic_file.write_text(json.dumps({"models": models}))


@pytest.fixture(scope="module")
def lifecycle_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LifecycleStack]:
    """``scale`` v1 (x1) @champion and v2 (x2) @challenger; one worker serving both; a gateway with a traffic file."""
    root = tmp_path_factory.mktemp("lifecycle")
    registry = create_registry(root / "registry")
    factors = {register_scale(registry, 1.0, aliases=("champion",)): 1.0}
    factors[register_scale(registry, 2.0, aliases=("challenger",))] = 2.0
    traffic_file = root / "traffic.json"
    traffic_file.write_text('{"models": {}}')
    stack = Stack(StackRegistry(root, registry.uri), root)
    try:
        worker = stack.start_worker(models=f"{SCALE}@champion,{SCALE}@challenger", env=WORKER_ENV)
        stack.start_gateway(env={"TANDEM_TRAFFIC_CONFIG": str(traffic_file), "TANDEM_TRAFFIC_CHECK_INTERVAL_S": "0.1"})
        yield LifecycleStack(stack, registry, worker, traffic_file, factors)
    finally:
        stack.stop()


@dataclass
class Answer:
    x: np.ndarray
    status: int
    version: str | None
    y: np.ndarray | None
    sent_at: float
    received_at: float


class HttpLoad:
    """``concurrency`` callers in a closed loop on ``/v2/models/scale/infer`` until stopped."""

    def __init__(self, client: httpx.AsyncClient, concurrency: int = CONCURRENCY) -> None:
        self.client = client
        self.concurrency = concurrency
        self.answers: list[Answer] = []
        self._stopped = asyncio.Event()
        self._count = 0

    async def run(self) -> None:
        await asyncio.gather(*(self._caller() for _ in range(self.concurrency)))

    def stop(self) -> None:
        self._stopped.set()

    async def _caller(self) -> None:
        while not self._stopped.is_set():
            self._count += 1
            x = np.full((1 + self._count % 3, WIDTH), float(1 + self._count % 97), np.float32)
            body = {"inputs": [{"name": "x", "shape": list(x.shape), "datatype": "FP32", "data": x.ravel().tolist()}]}
            sent_at = time.monotonic()
            answer = await self.client.post(
                f"/v2/models/{SCALE}/infer", json=body, headers={"X-Request-Timeout-Ms": REQUEST_TIMEOUT_MS}
            )
            version, y = None, None
            if answer.status_code == 200:
                reply = answer.json()
                version = reply["model_version"]
                y = np.asarray(reply["outputs"][0]["data"], np.float32).reshape(reply["outputs"][0]["shape"])
            self.answers.append(Answer(x, answer.status_code, version, y, sent_at, time.monotonic()))

    async def first_answer_by(self, version: str, after: float) -> float:
        """When the first answer by ``version`` to a request sent after ``after`` arrived."""
        deadline = time.monotonic() + SWAP_TIMEOUT_S
        while time.monotonic() < deadline:
            found = [a.received_at for a in self.answers if a.version == version and a.sent_at > after]
            if found:
                return min(found)
            await asyncio.sleep(0.05)
        raise TimeoutError(f"no answer by version {version} within {SWAP_TIMEOUT_S} s")


async def rejected_count(worker: str, count: int) -> None:
    deadline = time.monotonic() + SWAP_TIMEOUT_S
    while time.monotonic() < deadline:
        pong = await asyncio.to_thread(ping, worker)
        if pong is not None and lifecycle(pong).get("rejected", 0) >= count:
            return
        await asyncio.sleep(0.1)
    raise TimeoutError(f"the worker did not reject {count} versions within {SWAP_TIMEOUT_S} s")


def check_answers(answers: list[Answer], factors: dict[str, float]) -> None:
    """No request failed, and each answer is exactly the computation of the version it names."""
    assert answers
    failed = [(a.status, a.version) for a in answers if a.status != 200]
    assert not failed, f"{len(failed)} of {len(answers)} requests failed: {failed[:5]}"
    for answer in answers:
        assert answer.version in factors, answer.version
        np.testing.assert_array_equal(answer.y, scaled(answer.x, factors[answer.version]))


def test_split_by_user_follows_the_traffic_file_without_a_restart(lifecycle_stack: LifecycleStack) -> None:
    s = lifecycle_stack
    champion, challenger = sorted(s.factors, key=int)
    users = [f"user-{i}" for i in range(60)]
    body = {"inputs": [{"name": "x", "shape": [1, WIDTH], "datatype": "FP32", "data": [1.0] * WIDTH}]}

    def versions(client: httpx.Client) -> dict[str, str]:
        seen = {}
        for user in users:
            answer = client.post(f"/v2/models/{SCALE}/infer", json=body, headers={"X-User-Id": user})
            assert answer.status_code == 200, answer.text
            seen[user] = answer.json()["model_version"]
        return seen

    def settled(client: httpx.Client, expected: set[str]) -> dict[str, str]:
        """The versions users get once the gateway answers with exactly ``expected`` (the file is re-read)."""
        deadline = time.monotonic() + 5.0
        while set(versions(client).values()) != expected and time.monotonic() < deadline:
            time.sleep(0.1)
        return versions(client)

    with httpx.Client(base_url=s.stack.url, timeout=10) as client:
        assert set(versions(client).values()) == {champion}  # no entry: the worker's default alias
        s.set_traffic({SCALE: {"split": {"champion": 50, "challenger": 50}, "shadow": {"alias": "challenger"}}})
        first = settled(client, {champion, challenger})
        assert versions(client) == first  # sticky per user
        assert 15 <= sum(v == challenger for v in first.values()) <= 45
        s.set_traffic({SCALE: {"split": {"challenger": 1}}})
        assert set(settled(client, {challenger}).values()) == {challenger}
        s.set_traffic({})
        assert set(settled(client, {champion}).values()) == {champion}


def test_promote_reject_and_roll_back_under_load_without_a_failed_request(lifecycle_stack: LifecycleStack) -> None:
    s = lifecycle_stack
    uri = s.registry.uri
    v1 = min(s.factors, key=int)
    factors = {v1: 1.0}
    s.set_traffic({})  # unrouted: every request goes to the worker's default alias, champion
    time.sleep(0.3)

    async def releases() -> list[Answer]:
        limits = httpx.Limits(max_connections=CONCURRENCY)
        async with httpx.AsyncClient(base_url=s.stack.url, timeout=30, limits=limits) as client:
            load = HttpLoad(client)
            running = asyncio.create_task(load.run())
            try:
                await asyncio.sleep(0.5)
                # A good version, promoted: every request sent once its first answer came is answered by it.
                v3 = await asyncio.to_thread(register_scale, s.registry, 3.0)
                factors[v3] = 3.0
                promoted_at = time.monotonic()
                await asyncio.to_thread(models_cli.promote, uri, SCALE, v3, "champion")
                swapped_at = await load.first_answer_by(v3, promoted_at)
                assert swapped_at - promoted_at < 10.0
                # Broken versions, promoted and rolled back: never served, counted.
                unloadable = await asyncio.to_thread(register_unloadable, s.registry)
                await asyncio.to_thread(models_cli.promote, uri, SCALE, unloadable, "champion")
                await rejected_count(s.worker, 1)
                assert await asyncio.to_thread(models_cli.rollback, uri, SCALE, "champion") == (unloadable, v3)
                nan = await asyncio.to_thread(register_scale, s.registry, float("nan"))
                await asyncio.to_thread(models_cli.promote, uri, SCALE, nan, "champion")
                await rejected_count(s.worker, 2)
                assert await asyncio.to_thread(models_cli.rollback, uri, SCALE, "champion") == (nan, v3)
                await asyncio.sleep(0.5)
                # Roll back past the good version too: back to version 1, under load.
                rolled_at = time.monotonic()
                assert await asyncio.to_thread(models_cli.rollback, uri, SCALE, "champion") == (v3, v1)
                back_at = await load.first_answer_by(v1, rolled_at)
                await asyncio.sleep(0.5)
            finally:
                load.stop()
                await running
            answers = load.answers
        check_answers(answers, factors)
        # Sent after version 3's first answer came, and answered before the rollback began: version 3 only
        # (through both broken promotions).
        assert all(a.version == v3 for a in answers if a.sent_at > swapped_at and a.received_at < rolled_at)
        assert all(a.version == v1 for a in answers if a.sent_at > back_at)
        assert {a.version for a in answers} == {v1, v3}
        return answers

    answers = asyncio.run(releases())
    assert len(answers) > 200
    pong = ping(s.worker)
    assert pong is not None
    stats = lifecycle(pong)
    assert (stats["swaps"], stats["rejected"], stats["swaps_in_place"]) == (2, 2, 0)
    log = s.log()
    assert "broken on purpose" in log and "is not finite on the warm-up input" in log


def test_an_in_place_swap_drains_its_worker_while_another_serves(tmp_path: Path) -> None:
    registry = create_registry(tmp_path / "registry")
    v1 = register_scale(registry, 1.0, aliases=("champion",))
    v2 = register_scale(registry, 2.0)
    stack = Stack(StackRegistry(tmp_path, registry.uri), tmp_path)
    try:
        tight = stack.start_worker(
            models=f"{SCALE}@champion", env={**WORKER_ENV, "TANDEM_SWAP_MODE": "in_place", "TANDEM_SWAP_DRAIN_S": "0.5"}
        )
        roomy = stack.start_worker(models=f"{SCALE}@champion", env=WORKER_ENV)
        stack.start_gateway()

        async def release() -> list[Answer]:
            async with httpx.AsyncClient(base_url=stack.url, timeout=30) as client:
                load = HttpLoad(client)
                running = asyncio.create_task(load.run())
                try:
                    await asyncio.sleep(0.5)
                    await asyncio.to_thread(models_cli.promote, registry.uri, SCALE, v2, "champion")
                    deadline = time.monotonic() + SWAP_TIMEOUT_S
                    while time.monotonic() < deadline:
                        pongs = [await asyncio.to_thread(ping, worker) for worker in (tight, roomy)]
                        if all(p is not None and lifecycle(p).get("swaps") == 1 and p.ready for p in pongs):
                            break
                        await asyncio.sleep(0.1)
                    await asyncio.sleep(0.5)
                finally:
                    load.stop()
                    await running
                return load.answers

        answers = asyncio.run(release())
    finally:
        stack.stop()
    check_answers(answers, {v1: 1.0, v2: 2.0})
    assert answers[-1].version == v2
    log = "".join(path.read_text(errors="replace") for path in tmp_path.glob("worker-*.log"))
    assert "swapped in place" in log and "swapped beside the live copy" in log
