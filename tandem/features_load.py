"""``tandem features load``: write the demo catalog's users and products into Redis, for the gateways to read.

The records come from ``--home`` (``tandem.demo.dataset.read_catalog``, written by ``tandem models bootstrap``)
and go into the layout of ``tandem.gateway.redis_features``: one JSON blob per entity, the catalog of product
ids, and the ``meta`` marker. Order: entities in batches of ``batch_size`` (one ``MSET`` per batch: a round trip
per batch, not per key, and each key is replaced whole), then the catalog, then the entities of an earlier load
that are gone are deleted, and the marker last, so a marker always describes a finished load.

Idempotent: loading the same data again writes the same keys with the same bytes and the same ``version`` (a
digest of the records). While a load runs, gateways may read some old and some new records; each record is
always whole. Only keys under the layout's prefix are touched.
"""

from __future__ import annotations

import hashlib
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, TextIO

import orjson
import redis
from redis.backoff import ExponentialBackoff
from redis.retry import Retry

from tandem.gateway.redis_features import (
    KEY_PREFIX,
    SCHEMA_VERSION,
    catalog_key,
    encode_record,
    meta_key,
    product_key,
    user_key,
)

DEFAULT_BATCH_SIZE = 500
SOCKET_TIMEOUT_S = 30.0
CONNECT_TIMEOUT_S = 5.0
RETRIES = 3  # a transient error mid-load is retried; a dead Redis fails within a few seconds
RETRY_BASE_S = 0.1
RETRY_CAP_S = 1.0
SCAN_COUNT = 1000
VERSION_HEX_CHARS = 16
PROGRESS_BAR_WIDTH = 30
PROGRESS_LINES = 10  # lines printed over a load when stderr is not a terminal

Progress = Callable[[int, int], None]


@dataclass(frozen=True, slots=True)
class LoadSummary:
    """What a load wrote."""

    users: int
    products: int
    deleted: int
    version: str
    seconds: float


def load_records(
    client: redis.Redis,
    users: Sequence[Mapping[str, Any]],
    products: Sequence[Mapping[str, Any]],
    *,
    batch_size: int = DEFAULT_BATCH_SIZE,
    progress: Progress | None = None,
    prefix: str = KEY_PREFIX,
) -> LoadSummary:
    """Write ``users`` and ``products`` under ``prefix``; ``progress(done, total)`` after each batch."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    started = time.perf_counter()
    entries = [(user_key(u["user_id"], prefix), encode_record(u)) for u in users]
    entries += [(product_key(p["product_id"], prefix), encode_record(p)) for p in products]
    digest = hashlib.sha256()
    for key, blob in entries:
        digest.update(key.encode() + b"\x00" + blob + b"\x00")
    version = digest.hexdigest()[:VERSION_HEX_CHARS]

    total = len(entries)
    for start in range(0, total, batch_size):
        client.mset(dict(entries[start : start + batch_size]))
        if progress is not None:
            progress(min(start + batch_size, total), total)
    client.set(catalog_key(prefix), orjson.dumps([p["product_id"] for p in products]))
    deleted = _delete_stale(client, prefix, {key for key, _ in entries}, batch_size)
    meta = {
        "schema": SCHEMA_VERSION,
        "version": version,
        "users": len(users),
        "products": len(products),
        "loaded_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    client.set(meta_key(prefix), orjson.dumps(meta))
    return LoadSummary(len(users), len(products), deleted, version, time.perf_counter() - started)


def _delete_stale(client: redis.Redis, prefix: str, keep: set[str], batch_size: int) -> int:
    """Delete user and product keys under ``prefix`` that are not in ``keep``; how many went."""
    stale: list[str] = []
    for pattern in (user_key("*", prefix), product_key("*", prefix)):
        for raw in client.scan_iter(match=pattern, count=SCAN_COUNT):
            key = raw.decode() if isinstance(raw, bytes) else raw
            if key not in keep:
                stale.append(key)
    for start in range(0, len(stale), batch_size):
        client.delete(*stale[start : start + batch_size])
    return len(stale)


def stderr_progress(stream: TextIO = sys.stderr) -> Progress:
    """A progress printer: a bar redrawn in place on a terminal, a line per tenth otherwise."""
    interactive = stream.isatty()
    printed = [-1]

    def show(done: int, total: int) -> None:
        fraction = done / total if total else 1.0
        if interactive:
            filled = round(fraction * PROGRESS_BAR_WIDTH)
            bar = "#" * filled + "." * (PROGRESS_BAR_WIDTH - filled)
            stream.write(f"\rloading features [{bar}] {done}/{total}")
            if done >= total:
                stream.write("\n")
        else:
            step = int(fraction * PROGRESS_LINES)
            if step == printed[0]:
                return
            printed[0] = step
            stream.write(f"loading features: {done}/{total} ({fraction:.0%})\n")
        stream.flush()

    return show


def connect(redis_url: str) -> redis.Redis:
    """A client for ``redis_url`` that has answered a PING; ``ConnectionError`` says why not."""
    client = redis.Redis.from_url(
        redis_url,
        socket_timeout=SOCKET_TIMEOUT_S,
        socket_connect_timeout=CONNECT_TIMEOUT_S,
        retry=Retry(ExponentialBackoff(cap=RETRY_CAP_S, base=RETRY_BASE_S), RETRIES),
    )
    try:
        client.ping()
    except redis.RedisError as exc:
        client.close()
        raise ConnectionError(f"cannot reach Redis: {exc}") from exc
    return client


def load_home(
    home: Path, redis_url: str, *, batch_size: int = DEFAULT_BATCH_SIZE, progress: Progress | None = None
) -> LoadSummary:
    """Load the demo catalog under ``home`` into the Redis at ``redis_url``; ``ConnectionError`` if Redis fails."""
    from tandem.demo.dataset import read_catalog

    users, products = read_catalog(home)
    client = connect(redis_url)
    try:
        return load_records(client, users, products, batch_size=batch_size, progress=progress)
    except redis.RedisError as exc:
        raise ConnectionError(f"loading features into Redis failed: {exc}") from exc
    finally:
        client.close()
