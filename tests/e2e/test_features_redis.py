"""Recommendations from Redis features, end to end: one worker, two gateways (Redis and in memory), real HTTP.

``tandem features load`` fills a real redis-server from the demo home; both gateways must give the same ranked
answers. Then Redis is hung (SIGSTOP) and killed (SIGKILL) under the Redis gateway: every request still gets a
200 within its deadline, marked degraded, and once Redis is back (restarted on the same port and reloaded,
since it keeps nothing) answers are whole again without restarting the gateway.
"""

from __future__ import annotations

import asyncio
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from tandem.processes import child_environment, tandem_command
from tests.support.redis import RedisServer, running_redis
from tests.support.stack import Registry, Stack

DEADLINE_MS = 1000
RECOVERY_TIMEOUT_S = 10.0
# Generous for a loaded CI machine (a lookup takes about 1 ms); the deadline still bounds every request.
FEATURE_TIMEOUT_MS = "200"
BREAKER_OPEN_S = "0.3"


@dataclass
class FeatureStack:
    stack: Stack
    redis: RedisServer
    memory_url: str
    redis_url: str


@pytest.fixture(scope="module")
def features_stack(registry: Registry, tmp_path_factory: pytest.TempPathFactory) -> Iterator[FeatureStack]:
    logs = tmp_path_factory.mktemp("features-stack")
    with running_redis(logs) as server:
        _load_features(registry, server)
        stack = Stack(registry, logs)
        try:
            stack.start_worker()
            memory_url = stack.start_gateway()
            env = {
                "TANDEM_REDIS_URL": server.url,
                "TANDEM_FEATURE_TIMEOUT_MS": FEATURE_TIMEOUT_MS,
                "TANDEM_FEATURE_BREAKER_OPEN_S": BREAKER_OPEN_S,
            }
            redis_url = stack.start_gateway(env=env)
            yield FeatureStack(stack, server, memory_url, redis_url)
        finally:
            stack.stop()


def _load_features(registry: Registry, server: RedisServer) -> None:
    subprocess.run(
        tandem_command("features", "load", "--home", str(registry.home), "--redis-url", server.url),
        env=child_environment(),
        check=True,
        capture_output=True,
        timeout=60,
    )


REQUESTS: list[dict[str, Any]] = [
    {"user_id": "u00042", "k": 10},  # the whole catalog
    {"user_id": "u01999", "k": 50},
    {"user_id": "u00007", "candidates": [f"p{i:04d}" for i in range(0, 300, 3)], "k": 20},  # 100 candidates
    {"user_id": "stranger", "candidates": ["p0001", "p0002", "nope", "p0150", "p0299"], "k": 5},
]


def _recommend(url: str, body: dict[str, Any], timeout_ms: int = DEADLINE_MS) -> tuple[dict[str, Any], float]:
    began = time.perf_counter()
    answer = httpx.post(
        f"{url}/v1/recommendations", json=body, headers={"X-Request-Timeout-Ms": str(timeout_ms)}, timeout=10
    )
    elapsed = time.perf_counter() - began
    assert answer.status_code == 200, answer.text
    payload = answer.json()
    payload.pop("request_id")
    return payload, elapsed


def test_redis_and_in_memory_features_give_the_same_ranked_answers(features_stack: FeatureStack) -> None:
    for body in REQUESTS:
        from_memory, _ = _recommend(features_stack.memory_url, body)
        from_redis, _ = _recommend(features_stack.redis_url, body)
        assert from_redis == from_memory, body
        assert from_redis["items"], body
    stranger, _ = _recommend(features_stack.redis_url, REQUESTS[-1])
    assert stranger["degraded"] is True and stranger["defaulted"] == {"user": True, "products": ["nope"]}
    known, _ = _recommend(features_stack.redis_url, REQUESTS[0])
    assert known["degraded"] is False and len(known["items"]) == 10


def _wait_whole_again(url: str) -> dict[str, Any]:
    deadline = time.monotonic() + RECOVERY_TIMEOUT_S
    while True:
        payload, _ = _recommend(url, REQUESTS[0])
        if not payload["degraded"]:
            return payload
        if time.monotonic() > deadline:
            raise AssertionError(f"answers still degraded {RECOVERY_TIMEOUT_S} s after Redis came back: {payload}")
        time.sleep(0.1)


def test_a_hung_redis_degrades_answers_within_the_deadline_then_recovers(features_stack: FeatureStack) -> None:
    expected, _ = _recommend(features_stack.memory_url, REQUESTS[0])
    features_stack.redis.pause()
    try:
        for _ in range(8):
            payload, elapsed = _recommend(features_stack.redis_url, REQUESTS[0], timeout_ms=500)
            assert elapsed < 0.5, elapsed
            assert payload["degraded"] is True
            assert payload["defaulted"]["features"] in ("timeout", "unavailable")
            assert payload["defaulted"]["scores"] == "fallback" and len(payload["items"]) == 10
    finally:
        features_stack.redis.resume()
    assert _wait_whole_again(features_stack.redis_url) == expected


async def _load_while(url: str, action_at: int, action: Any, count: int = 40) -> list[tuple[int, dict, float]]:
    async with httpx.AsyncClient(base_url=url, timeout=10) as client:

        async def one(i: int) -> tuple[int, dict, float]:
            await asyncio.sleep(i * 0.02)
            if i == action_at:
                action()
            began = time.perf_counter()
            answer = await client.post(
                "/v1/recommendations", json=REQUESTS[2], headers={"X-Request-Timeout-Ms": str(DEADLINE_MS)}
            )
            return answer.status_code, answer.json(), time.perf_counter() - began

        return await asyncio.gather(*(one(i) for i in range(count)))


def test_a_killed_redis_degrades_answers_and_a_restarted_one_is_used_again(features_stack: FeatureStack) -> None:
    gateway = features_stack.stack.gateways[-1][1]
    expected, _ = _recommend(features_stack.memory_url, REQUESTS[0])
    results = asyncio.run(_load_while(features_stack.redis_url, 10, features_stack.redis.kill))
    assert [status for status, _, _ in results] == [200] * len(results)
    assert all(elapsed < DEADLINE_MS / 1000 for _, _, elapsed in results)
    assert all(not body["degraded"] for _, body, _ in results[:5])  # well before the kill
    after = [body for _, body, _ in results[12:]]
    assert all(body["degraded"] and body["defaulted"]["features"] in ("error", "unavailable") for body in after)

    features_stack.redis.start()  # same port; it kept nothing, so the features are loaded again
    _load_features(features_stack.stack.registry, features_stack.redis)
    assert _wait_whole_again(features_stack.redis_url) == expected
    assert gateway.poll() is None  # the same gateway process throughout
