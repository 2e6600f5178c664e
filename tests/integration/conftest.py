"""Fixtures of the integration tests: one real dependency at a time."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.redis import RedisServer, running_redis


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    """A fresh, empty redis-server on a free port (it starts in milliseconds), stopped in teardown."""
    with running_redis(tmp_path) as server:
        yield server
