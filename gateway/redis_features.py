"""Features in Redis: the key layout (shared with ``tandem features load``) and the gateway's reader.

Layout, under ``KEY_PREFIX`` (``tandem:features``)::

    tandem:features:user:<user_id>        one user's raw record, a JSON object (orjson)
    tandem:features:product:<product_id>  one product's raw record, a JSON object
    tandem:features:catalog               JSON list of every product id (the candidates when a request names none)
    tandem:features:meta                  JSON {"schema", "version", "users", "products", "loaded_at"}, written last

One JSON blob per entity, read with one ``MGET`` for the user plus every candidate: one command and one round
trip per request. Measured with 100 candidates against a local redis-server (redis-py 8.1, pure-Python parser),
``MGET`` of JSON blobs took about 0.6 ms at p50 against 4.7 ms for a pipeline of 101 ``HGETALL`` on a hash per
entity, whose per-command client overhead dominates (``benchmarks/feature_lookup.py`` measures both). JSON also
round-trips exactly what the shared feature code needs: orjson writes the shortest repr of a float, which reads
back as the same double, and ints stay ints, so serving sees the values training saw.

``RedisFeatureStore`` ownership: everything runs on the gateway's event loop. Lookups use a connection pool
whose socket timeouts are the feature timeout, with no retries (a retry would double the wait; the caller has a
fallback), and each call is also bounded by the request's remaining deadline. Failures feed a
``CircuitBreaker``: after a few in a row Redis is skipped (defaults at once) and probed once per window, so a
dead Redis does not cost a timeout on every request. redis-py drops a connection that failed or timed out and
checks pooled connections before use, so after Redis comes back the next lookup reconnects: nothing dead stays
cached. A background task re-reads the catalog when the ``meta`` version changes, on its own one-connection
client with a longer timeout (the catalog can be large).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import orjson
import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from tandem.gateway.breaker import OPEN, CircuitBreaker
from tandem.gateway.feature_store import (
    FAILURE_ERROR,
    FAILURE_TIMEOUT,
    FAILURE_UNAVAILABLE,
    FeatureLookup,
    FeatureStats,
    Record,
    found,
)

if TYPE_CHECKING:
    from tandem.common.settings import GatewaySettings

log = logging.getLogger("tandem.gateway.features")

KEY_PREFIX = "tandem:features"
SCHEMA_VERSION = 1
CATALOG_TIMEOUT_S = 5.0  # reading the catalog: a large value, off the request path
_MS_PER_S = 1000.0


def user_key(user_id: str, prefix: str = KEY_PREFIX) -> str:
    """The key of a user's record."""
    return f"{prefix}:user:{user_id}"


def product_key(product_id: str, prefix: str = KEY_PREFIX) -> str:
    """The key of a product's record."""
    return f"{prefix}:product:{product_id}"


def catalog_key(prefix: str = KEY_PREFIX) -> str:
    """The key of the list of product ids."""
    return f"{prefix}:catalog"


def meta_key(prefix: str = KEY_PREFIX) -> str:
    """The key of the load marker (written last by the loader)."""
    return f"{prefix}:meta"


def encode_record(record: Record) -> bytes:
    """A record's stored form: JSON, floats in their shortest exact repr."""
    return orjson.dumps(record)


def decode_record(blob: bytes) -> dict[str, Any]:
    """The record stored as ``blob``; raises ``ValueError`` when it is not a JSON object."""
    record = orjson.loads(blob)
    if not isinstance(record, dict):
        raise ValueError(f"a feature record must be a JSON object, got {type(record).__name__}")
    return record


def _no_retry() -> Retry:
    return Retry(NoBackoff(), 0)


class RedisFeatureStore:
    """Raw records read from Redis with one ``MGET`` per lookup; see the module docstring for the contract."""

    def __init__(
        self,
        client: aioredis.Redis,
        *,
        timeout_s: float,
        breaker: CircuitBreaker,
        refresh_s: float,
        catalog_client: aioredis.Redis | None = None,
        prefix: str = KEY_PREFIX,
    ) -> None:
        self._client = client
        self._catalog_client = catalog_client or client
        self._timeout_s = timeout_s
        self._breaker = breaker
        self._refresh_s = refresh_s
        self._prefix = prefix
        self._catalog: list[str] = []
        self._loaded_version: str | None = None
        self._refresher: asyncio.Task[None] | None = None
        self._catalog_failing = False
        self.stats = FeatureStats()

    @classmethod
    def from_settings(cls, settings: GatewaySettings) -> RedisFeatureStore:
        """A store on ``settings.redis_url`` with its pool, timeouts and breaker from ``settings``."""
        timeout_s = settings.feature_timeout_ms / _MS_PER_S
        pool = aioredis.BlockingConnectionPool.from_url(
            settings.redis_url,
            max_connections=settings.redis_max_connections,
            timeout=timeout_s,  # waiting for a free pooled connection counts against the same budget
            socket_timeout=timeout_s,
            socket_connect_timeout=timeout_s,
            retry=_no_retry(),
        )
        catalog_pool = aioredis.ConnectionPool.from_url(
            settings.redis_url,
            max_connections=1,
            socket_timeout=CATALOG_TIMEOUT_S,
            socket_connect_timeout=CATALOG_TIMEOUT_S,
            retry=_no_retry(),
        )
        return cls(
            aioredis.Redis(connection_pool=pool),
            timeout_s=timeout_s,
            breaker=CircuitBreaker(settings.feature_breaker_failures, settings.feature_breaker_open_s),
            refresh_s=settings.feature_refresh_s,
            catalog_client=aioredis.Redis(connection_pool=catalog_pool),
        )

    @property
    def breaker(self) -> CircuitBreaker:
        """The breaker guarding lookups (its ``state`` and ``opened`` count are worth exporting)."""
        return self._breaker

    async def start(self) -> None:
        """Read the catalog once (a failure is logged, not raised) and start re-reading it periodically."""
        await self.refresh_catalog()
        self._refresher = asyncio.create_task(self._refresh_forever(), name="refresh feature catalog")

    async def close(self) -> None:
        """Stop the refresher and close both connection pools."""
        if self._refresher is not None:
            self._refresher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._refresher
        await self._client.aclose(close_connection_pool=True)
        if self._catalog_client is not self._client:
            await self._catalog_client.aclose(close_connection_pool=True)

    def catalog(self) -> Sequence[str]:
        """The product ids of the last catalog read (empty until one succeeds)."""
        return self._catalog

    async def lookup(self, user_id: str, product_ids: Sequence[str], timeout_s: float | None = None) -> FeatureLookup:
        """One ``MGET`` for the user and every product, within ``min(timeout_s, feature timeout)``."""
        self.stats.lookups += 1
        budget_s = self._timeout_s if timeout_s is None else min(timeout_s, self._timeout_s)
        if budget_s <= 0:
            self.stats.timeouts += 1
            return self.stats.count(FeatureLookup.failed(product_ids, FAILURE_TIMEOUT))
        if not self._breaker.allow():
            self.stats.short_circuits += 1
            return self.stats.count(FeatureLookup.failed(product_ids, FAILURE_UNAVAILABLE))
        keys = [user_key(user_id, self._prefix), *(product_key(pid, self._prefix) for pid in product_ids)]
        try:
            # socket_timeout bounds each socket operation; wait_for bounds the whole call by the request's budget.
            blobs = await asyncio.wait_for(self._client.mget(keys), budget_s)
        except (asyncio.TimeoutError, RedisTimeoutError):
            if budget_s < self._timeout_s:
                # The caller's deadline was nearly spent, not Redis slow: no evidence for the breaker.
                self.stats.timeouts += 1
                return self.stats.count(FeatureLookup.failed(product_ids, FAILURE_TIMEOUT))
            return self._failed(product_ids, FAILURE_TIMEOUT)
        except (RedisError, OSError) as exc:
            log.debug("feature lookup failed: %s", exc)
            return self._failed(product_ids, FAILURE_ERROR)
        if self._breaker.state == OPEN:
            log.info("feature store answering again")
        self._breaker.record_success()
        records = [self._decode(key, blob) for key, blob in zip(keys, blobs, strict=True)]
        return self.stats.count(found(records[0], product_ids, records[1:]))

    def _failed(self, product_ids: Sequence[str], reason: str) -> FeatureLookup:
        if reason == FAILURE_TIMEOUT:
            self.stats.timeouts += 1
        else:
            self.stats.errors += 1
        was = self._breaker.state
        self._breaker.record_failure()
        if self._breaker.state != was:
            log.warning(
                "feature store failing (%s): answering from defaults, probing every %g s", reason, self._breaker.open_s
            )
        return self.stats.count(FeatureLookup.failed(product_ids, reason))

    def _decode(self, key: str, blob: bytes | None) -> dict[str, Any] | None:
        if blob is None:
            return None
        try:
            return decode_record(blob)
        except ValueError as exc:
            self.stats.bad_records += 1
            log.warning("ignoring the malformed record at %s: %s", key, exc)
            return None

    async def refresh_catalog(self) -> bool:
        """Re-read the catalog if the loaded version changed; False when Redis could not be read."""
        try:
            meta_blob = await self._catalog_client.get(meta_key(self._prefix))
            if meta_blob is None:
                self._catalog, self._loaded_version = [], None
                self._note_catalog(ok=False, why="no features loaded (run `tandem features load`)")
                return True
            version = str(orjson.loads(meta_blob).get("version"))
            if version != self._loaded_version:
                blob = await self._catalog_client.get(catalog_key(self._prefix))
                catalog = orjson.loads(blob) if blob is not None else []
                self._catalog = [str(pid) for pid in catalog]
                self._loaded_version = version
                log.info("feature catalog version %s: %d products", version, len(self._catalog))
        except (RedisError, OSError, ValueError, AttributeError) as exc:
            self._note_catalog(ok=False, why=str(exc))
            return False
        self._note_catalog(ok=True, why="")
        return True

    def _note_catalog(self, *, ok: bool, why: str) -> None:
        # Log on a change of health only: a dead Redis must not flood the log every refresh.
        if not ok and not self._catalog_failing:
            log.warning("cannot read the feature catalog from Redis: %s", why)
        elif ok and self._catalog_failing:
            log.info("feature catalog readable again")
        self._catalog_failing = not ok

    async def _refresh_forever(self) -> None:
        while True:
            await asyncio.sleep(self._refresh_s)
            await self.refresh_catalog()
