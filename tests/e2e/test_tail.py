"""Tail latency and fault tolerance with real processes: failover, re-admission, hedging, load shedding."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

import numpy as np
import orjson
import pytest

from benchmarks.loadgen import LoadResult, build_request, closed_loop, open_loop
from tandem.demo.test_models import Sleeper
from tandem.demo.train import register_model
from tests.support.stack import Registry, Stack, rss_kib
from tests.support.workers import model_stats, ping

SLEEPER_BODY = orjson.dumps({"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4]}]})


def sleeper_request(url: str, timeout_ms: int | None = None) -> tuple[str, int, bytes]:
    host, port = url.removeprefix("http://").split(":")
    headers = {"Content-Type": "application/json"}
    if timeout_ms is not None:
        headers["X-Request-Timeout-Ms"] = str(timeout_ms)
    return host, int(port), build_request(host, int(port), "/v2/models/sleeper/infer", SLEEPER_BODY, headers)


@pytest.fixture(scope="module")
def straggler(registry: Registry) -> str:
    """A version of ``sleeper`` that stalls on a seeded 3% of its batches, under the alias ``straggler``."""
    slow = Sleeper(per_batch_s=0.003, per_item_s=0.0002, stall_probability=0.03, stall_s=0.4, seed=11)
    return register_model(
        slow,
        registry_uri=registry.uri,
        name="sleeper",
        alias="straggler",
        input_example=np.zeros((2, 4), np.float32),
        input_name="x",
        output_name="y",
    )


def test_a_killed_worker_costs_nothing_and_gets_traffic_again_after_restart(
    make_stack: Callable[..., Stack],
) -> None:
    stack = make_stack(workers=2)
    victim = next(iter(stack.workers))
    host, port, request = sleeper_request(stack.url, timeout_ms=5000)

    async def scenario() -> list[LoadResult]:
        loop = asyncio.get_running_loop()
        during = asyncio.create_task(closed_loop(host, port, request, concurrency=4, duration_s=2.0))
        await asyncio.sleep(1.0)
        await loop.run_in_executor(None, stack.kill_worker, victim)
        first = await during
        await loop.run_in_executor(None, stack.start_worker, victim)
        return [first, await closed_loop(host, port, request, concurrency=4, duration_s=1.5)]

    for result in asyncio.run(scenario()):
        assert result.ok == len(result.latencies_s) > 50 and not result.errors, result.summary()
        assert max(result.latencies_s) < 1.0, result.summary()
    pong = ping(victim)
    assert pong is not None and model_stats(pong, "sleeper")["requests"] > 0, "the restarted worker got no traffic"


def _p99_ms(url: str, requests: int) -> tuple[float, LoadResult]:
    host, port, request = sleeper_request(url, timeout_ms=5000)
    asyncio.run(closed_loop(host, port, request, concurrency=4, duration_s=30, max_requests=100))  # warm-up
    result = asyncio.run(closed_loop(host, port, request, concurrency=4, duration_s=60, max_requests=requests))
    assert result.ok == len(result.latencies_s), result.summary()
    return result.percentile_ms(99), result


def test_hedging_cuts_the_tail_of_a_straggling_worker(make_stack: Callable[..., Stack], straggler: str) -> None:
    stack = make_stack(workers=1, gateway=False)
    stack.start_worker(models="sleeper@straggler")
    unhedged_url = stack.start_gateway(env={"TANDEM_HEDGE_MODELS": ""})
    # A fixed delay and a roomy budget: this 2-core machine's CPU noise alone would spend an adaptive budget
    # (benchmarks/hedging.py measures the adaptive default under the conditions).
    hedged_url = stack.start_gateway(
        env={"TANDEM_HEDGE_MODELS": "sleeper", "TANDEM_HEDGE_DELAY_MS": "50", "TANDEM_HEDGE_BUDGET_RATIO": "0.2"}
    )
    unhedged_p99, _ = _p99_ms(unhedged_url, 800)
    hedged_p99, _ = _p99_ms(hedged_url, 800)
    assert unhedged_p99 > 300, f"the straggler did not stall enough to test anything: p99 {unhedged_p99:.1f} ms"
    assert hedged_p99 < unhedged_p99 / 3, f"hedged p99 {hedged_p99:.1f} ms vs unhedged {unhedged_p99:.1f} ms"


def test_overload_is_shed_fast_and_admitted_requests_meet_their_deadline(
    make_stack: Callable[..., Stack], tmp_path: Path
) -> None:
    # One request per batch: the worker, not the gateway, is the bottleneck (about 190 requests/s).
    stack = make_stack(workers=1, worker_args=("--max-batch-size", "1"))
    worker_pid = next(iter(stack.workers.values())).pid
    gateway_pid = stack.gateways[0][1].pid
    host, port, request = sleeper_request(stack.url, timeout_ms=250)
    capacity = asyncio.run(closed_loop(host, port, request, concurrency=4, duration_s=2.0)).throughput
    memory_before = rss_kib(worker_pid), rss_kib(gateway_pid)

    result = asyncio.run(open_loop(host, port, request, rate_rps=3 * capacity, duration_s=4.0))
    statuses = result.statuses
    assert not result.errors, result.summary()
    assert statuses[200] > 0.5 * capacity * 4, result.summary()
    assert statuses[503] > 0, result.summary()
    # A few admitted requests may still be late when the shared machine stalls mid-run (CI on a 2-core box saw
    # 1.2% and 1.6% in slow periods, 0-0.5% otherwise); without shedding nearly all would be.
    assert statuses[504] <= 0.03 * sum(statuses.values()), result.summary()
    # Refusals come from the gateway (the worker's pong says it is full) or the worker's admission: fast.
    assert result.percentile_ms(50, 503) < 25, result.summary()
    memory_after = rss_kib(worker_pid), rss_kib(gateway_pid)
    for before, after in zip(memory_before, memory_after, strict=True):
        assert after - before < 64 * 1024, (memory_before, memory_after)
