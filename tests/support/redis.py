"""A real ``redis-server`` for tests: a free port, no persistence, readiness by PING, stopped in teardown.

It can be killed (SIGKILL), paused (SIGSTOP: a hung server that accepts connections but never answers) and
started again on the same port, to test what clients do when Redis goes away and comes back. ``redis-server``
must be on PATH: ``make install-test`` installs it; a missing binary fails the test with that hint, never a
silent skip.
"""

from __future__ import annotations

import shutil
import signal
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import redis

from tests.support.ports import LOCALHOST, free_port
from tests.support.processes import Process, wait_until

REDIS_SERVER = "redis-server"
START_TIMEOUT_S = 10.0
PING_TIMEOUT_S = 0.2


def redis_server_binary() -> str:
    """The path of ``redis-server``; fails the test with the install hint when it is missing."""
    path = shutil.which(REDIS_SERVER)
    if path is None:
        pytest.fail(f"{REDIS_SERVER} is not on PATH: run `make install-test` (it installs it with apt)")
    return path


class RedisServer:
    """One redis-server on a fixed free port, which survives restarts (``kill`` then ``start``)."""

    def __init__(self, log_dir: Path) -> None:
        self.binary = redis_server_binary()
        self.port = free_port()
        self.log_dir = log_dir
        self.process: Process | None = None
        self._starts = 0

    @property
    def url(self) -> str:
        """``redis://127.0.0.1:PORT/0``."""
        return f"redis://{LOCALHOST}:{self.port}/0"

    def client(self) -> redis.Redis:
        """A new synchronous client (close it after use)."""
        return redis.Redis(host=LOCALHOST, port=self.port, socket_timeout=5.0)

    def ping(self) -> bool:
        """True when the server answers a PING right now."""
        probe = redis.Redis(host=LOCALHOST, port=self.port, socket_timeout=PING_TIMEOUT_S)
        try:
            return bool(probe.ping())
        except redis.RedisError:
            return False
        finally:
            probe.close()

    def start(self) -> None:
        """Start the server (again) on ``port`` and wait until it answers PING."""
        if self.process is not None and self.process.alive():
            raise RuntimeError("redis-server is already running")
        self._starts += 1
        log_path = self.log_dir / f"redis-{self.port}-{self._starts}.log"
        argv = [self.binary, "--port", str(self.port), "--bind", LOCALHOST, "--save", "", "--appendonly", "no"]
        with open(log_path, "wb") as log:
            popen = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        self.process = Process(popen, log_path)
        wait_until(self.ping, what=f"redis-server on port {self.port}", timeout_s=START_TIMEOUT_S, process=self.process)

    def kill(self) -> None:
        """SIGKILL the server (its data is lost: nothing is persisted)."""
        if self.process is not None:
            self.process.signal(signal.SIGKILL)
            self.process.popen.wait()

    def pause(self) -> None:
        """SIGSTOP the server: connections stay open, nothing is answered."""
        if self.process is not None:
            self.process.signal(signal.SIGSTOP)

    def resume(self) -> None:
        """SIGCONT a paused server."""
        if self.process is not None:
            self.process.signal(signal.SIGCONT)

    def stop(self) -> None:
        """Stop the server if it runs (a paused one is resumed first so it can exit)."""
        if self.process is not None and self.process.alive():
            self.resume()
            self.process.stop()


@contextmanager
def running_redis(log_dir: Path) -> Iterator[RedisServer]:
    """A started ``RedisServer`` for the duration of the block; always stopped on exit."""
    server = RedisServer(log_dir)
    try:
        server.start()
        yield server
    finally:
        server.stop()
