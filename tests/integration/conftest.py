"""Fixtures of the integration tests: one real dependency at a time."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import zmq

from tests.support.redis import RedisServer, running_redis

CONNECT_TIMEOUT_MS = 5000


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    """A fresh, empty redis-server on a free port (it starts in milliseconds), stopped in teardown."""
    with running_redis(tmp_path) as server:
        yield server


@pytest.fixture
def zmq_pair() -> Iterator[tuple[zmq.Socket, zmq.Socket]]:
    """A ROUTER and a DEALER connected to it over TCP on an ephemeral port, the connection complete.

    The DEALER is set as the gateway's are: ``IMMEDIATE``, so it takes messages only while connected.
    """
    context = zmq.Context()
    router = context.socket(zmq.ROUTER)
    router.setsockopt(zmq.LINGER, 0)
    port = router.bind_to_random_port("tcp://127.0.0.1")
    dealer = context.socket(zmq.DEALER)
    dealer.setsockopt(zmq.LINGER, 0)
    dealer.setsockopt(zmq.IMMEDIATE, 1)
    dealer.connect(f"tcp://127.0.0.1:{port}")
    assert dealer.poll(CONNECT_TIMEOUT_MS, zmq.POLLOUT), "the DEALER did not connect"
    yield router, dealer
    dealer.close(linger=0)
    router.close(linger=0)
    context.term()
