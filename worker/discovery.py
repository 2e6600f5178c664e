"""A worker's registration in the Redis worker registry (see ``tandem.common.discovery``).

Runs as a task on the worker's event loop once its models are loaded: it refreshes the heartbeat key every
second and deregisters on a clean stop. A Redis outage is logged and retried; the worker keeps serving the
gateways that already know it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

import redis.asyncio as redis
from redis.exceptions import RedisError

from tandem.common.discovery import HEARTBEAT_INTERVAL_S, HEARTBEAT_TTL_MS, WORKERS_SET, heartbeat_key

log = logging.getLogger("tandem.worker.discovery")

REDIS_TIMEOUT_S = 1.0


async def register_forever(redis_url: str, endpoint: str) -> None:
    """Keep ``endpoint`` registered until cancelled, then remove it."""
    client = redis.from_url(redis_url, socket_timeout=REDIS_TIMEOUT_S, socket_connect_timeout=REDIS_TIMEOUT_S)
    key = heartbeat_key(endpoint)
    failing = False
    try:
        while True:
            try:
                async with client.pipeline(transaction=False) as pipe:
                    pipe.sadd(WORKERS_SET, endpoint)
                    pipe.set(key, b"1", px=HEARTBEAT_TTL_MS)
                    await pipe.execute()
                if failing:
                    log.info("registered %s in Redis again", endpoint)
                failing = False
            except (RedisError, OSError) as exc:
                if not failing:
                    log.warning("cannot register %s in Redis: %s; retrying", endpoint, exc)
                failing = True
            await asyncio.sleep(HEARTBEAT_INTERVAL_S)
    finally:
        with contextlib.suppress(RedisError, OSError):
            async with client.pipeline(transaction=False) as pipe:
                pipe.srem(WORKERS_SET, endpoint)
                pipe.delete(key)
                await asyncio.shield(pipe.execute())
        await client.aclose()
