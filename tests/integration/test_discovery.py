"""Workers registering in a real redis-server, and a gateway's pool following them without a restart."""

from __future__ import annotations

import asyncio
import contextlib

import pytest
import redis.asyncio as redis

from tandem.common.discovery import HEARTBEAT_TTL_MS, WORKERS_SET, heartbeat_key
from tandem.gateway.discovery import RedisDiscovery
from tandem.gateway.worker_client import WorkerPool
from tandem.worker.discovery import register_forever
from tests.support.redis import RedisServer

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


async def eventually(condition, timeout_s: float = 5.0) -> None:
    async with asyncio.timeout(timeout_s):
        while not await condition():
            await asyncio.sleep(0.02)


async def test_registration_is_refreshed_and_removed_on_a_clean_stop(redis_server: RedisServer) -> None:
    client = redis.from_url(redis_server.url)
    task = asyncio.create_task(register_forever(redis_server.url, "tcp://w1:5555"))
    try:

        async def registered() -> bool:
            return await client.sismember(WORKERS_SET, "tcp://w1:5555") and await client.exists(
                heartbeat_key("tcp://w1:5555")
            )

        await eventually(registered)
        ttl_ms = await client.pttl(heartbeat_key("tcp://w1:5555"))
        assert 0 < ttl_ms <= HEARTBEAT_TTL_MS
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    assert not await client.sismember(WORKERS_SET, "tcp://w1:5555")
    await client.aclose()


async def test_the_pool_follows_workers_coming_and_going(redis_server: RedisServer) -> None:
    pool = WorkerPool([], ping_interval_s=0.1, silence_s=1.0)
    await pool.start()
    discovery = RedisDiscovery(redis_server.url, pool, interval_s=0.05)
    follow = asyncio.create_task(discovery.run())
    first = asyncio.create_task(register_forever(redis_server.url, "tcp://127.0.0.1:1"))
    second = asyncio.create_task(register_forever(redis_server.url, "tcp://127.0.0.1:2"))
    try:

        async def both() -> bool:
            return sorted(pool.endpoints) == ["tcp://127.0.0.1:1", "tcp://127.0.0.1:2"]

        await eventually(both)
        first.cancel()  # a clean stop deregisters at once

        async def only_second() -> bool:
            return pool.endpoints == ["tcp://127.0.0.1:2"]

        await eventually(only_second)
    finally:
        for task in (first, second, follow):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await discovery.close()
        await pool.close()


async def test_a_killed_worker_is_dropped_when_its_heartbeat_expires(redis_server: RedisServer) -> None:
    client = redis.from_url(redis_server.url)
    # What a SIGKILLed worker leaves behind: its set entry and a heartbeat that is about to expire.
    await client.sadd(WORKERS_SET, "tcp://127.0.0.1:3")
    await client.set(heartbeat_key("tcp://127.0.0.1:3"), b"1", px=200)
    pool = WorkerPool([], ping_interval_s=0.1, silence_s=1.0)
    await pool.start()
    discovery = RedisDiscovery(redis_server.url, pool, interval_s=0.05)
    try:
        await discovery.sync_once()
        assert pool.endpoints == ["tcp://127.0.0.1:3"]
        await asyncio.sleep(0.3)
        await discovery.sync_once()
        assert pool.endpoints == []
        assert not await client.sismember(WORKERS_SET, "tcp://127.0.0.1:3")
    finally:
        await discovery.close()
        await pool.close()
        await client.aclose()


async def test_a_redis_outage_keeps_the_known_workers(redis_server: RedisServer) -> None:
    pool = WorkerPool([], ping_interval_s=0.1, silence_s=1.0)
    await pool.start()
    discovery = RedisDiscovery(redis_server.url, pool, interval_s=0.05)
    registration = asyncio.create_task(register_forever(redis_server.url, "tcp://127.0.0.1:4"))
    follow = asyncio.create_task(discovery.run())
    try:

        async def known() -> bool:
            return pool.endpoints == ["tcp://127.0.0.1:4"]

        await eventually(known)
        redis_server.kill()
        await asyncio.sleep(0.5)
        assert pool.endpoints == ["tcp://127.0.0.1:4"]
    finally:
        for task in (registration, follow):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await discovery.close()
        await pool.close()
