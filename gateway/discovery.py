"""Finding workers: a static list, or the Redis worker registry (see ``tandem.common.discovery``).

With Redis, the gateway reads the registry every ``interval_s`` and connects to new workers and drops gone ones,
so scaling workers up and down needs no gateway restart. A Redis outage keeps the current set of workers.
"""

from __future__ import annotations

import asyncio
import logging

import redis.asyncio as redis
from redis.exceptions import RedisError

from tandem.common.discovery import WORKERS_SET, heartbeat_key
from tandem.gateway.worker_client import WorkerPool

log = logging.getLogger("tandem.gateway.discovery")

REDIS_TIMEOUT_S = 1.0


class RedisDiscovery:
    """Keeps a ``WorkerPool``'s endpoints equal to the live workers registered in Redis."""

    def __init__(self, redis_url: str, pool: WorkerPool, interval_s: float) -> None:
        self._client = redis.from_url(redis_url, socket_timeout=REDIS_TIMEOUT_S, socket_connect_timeout=REDIS_TIMEOUT_S)
        self._pool = pool
        self._interval_s = interval_s
        self._failing = False

    async def live_endpoints(self) -> set[str]:
        """Registered endpoints whose heartbeat is alive; expired ones are removed from the registry."""
        members = sorted(m.decode() for m in await self._client.smembers(WORKERS_SET))
        if not members:
            return set()
        beats = await self._client.mget([heartbeat_key(m) for m in members])
        stale = [m for m, beat in zip(members, beats, strict=True) if beat is None]
        if stale:
            await self._client.srem(WORKERS_SET, *stale)
        return {m for m, beat in zip(members, beats, strict=True) if beat is not None}

    async def sync_once(self) -> None:
        """One reconciliation of the pool with the registry."""
        live = await self.live_endpoints()
        for endpoint in sorted(live - set(self._pool.endpoints)):
            self._pool.add_endpoint(endpoint)
        for endpoint in sorted(set(self._pool.endpoints) - live):
            await self._pool.remove_endpoint(endpoint)

    async def run(self) -> None:
        """Reconcile forever (cancel to stop)."""
        while True:
            try:
                await self.sync_once()
                if self._failing:
                    log.info("worker registry in Redis is reachable again")
                self._failing = False
            except (RedisError, OSError) as exc:
                if not self._failing:
                    log.warning("cannot read the worker registry in Redis: %s; keeping the known workers", exc)
                self._failing = True
            await asyncio.sleep(self._interval_s)

    async def close(self) -> None:
        """Close the Redis connection pool."""
        await self._client.aclose()
