"""Run a real worker process and talk to it over ZeroMQ the way a gateway does (a DEALER socket)."""

from __future__ import annotations

import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import zmq

from tandem.common.wire import Buffer, Message, Ping, Pong, decode, encode
from tests.support.ports import free_endpoint
from tests.support.processes import Process, started, wait_until

READY_TIMEOUT_S = 60.0
PING_TIMEOUT_S = 0.5
REPLY_TIMEOUT_S = 10.0
MS_PER_S = 1000


class DealerClient:
    """A DEALER socket connected to one worker; synchronous, for tests."""

    def __init__(self, endpoint: str) -> None:
        self._context = zmq.Context()
        self.socket = self._context.socket(zmq.DEALER)
        self.socket.setsockopt(zmq.LINGER, 0)
        self.socket.connect(endpoint)

    def send(self, message: Message) -> None:
        """Send a wire message."""
        self.send_frames(encode(message))

    def send_frames(self, frames: Sequence[Buffer]) -> None:
        """Send raw frames (for malformed messages)."""
        self.socket.send_multipart(list(frames), copy=False)

    def recv(self, timeout_s: float = REPLY_TIMEOUT_S) -> Message:
        """The next message from the worker; TimeoutError if none comes in time."""
        if not self.socket.poll(int(timeout_s * MS_PER_S)):
            raise TimeoutError(f"no message from the worker within {timeout_s} s")
        return decode(self.socket.recv_multipart())

    def request(self, message: Message, timeout_s: float = REPLY_TIMEOUT_S) -> Message:
        """Send ``message`` and return the next message received."""
        self.send(message)
        return self.recv(timeout_s)

    def close(self) -> None:
        """Close the socket and its context."""
        self.socket.close(linger=0)
        self._context.term()

    def __enter__(self) -> DealerClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def ping(endpoint: str, timeout_s: float = PING_TIMEOUT_S) -> Pong | None:
    """One ping on a fresh socket: the worker's pong, or None when it does not answer in time."""
    with DealerClient(endpoint) as client:
        try:
            reply = client.request(Ping(seq=1), timeout_s)
        except TimeoutError:
            return None
    return reply if isinstance(reply, Pong) else None


def model_stats(pong: Pong, name: str) -> dict[str, Any]:
    """The batch counters a worker reports for model ``name``."""
    return next(m["stats"] for m in pong.models if m["name"] == name)


@dataclass
class RunningWorker:
    """A worker process and the endpoint it serves on."""

    process: Process
    endpoint: str

    def client(self) -> DealerClient:
        """A new DEALER connected to this worker (close it after use)."""
        return DealerClient(self.endpoint)

    def pong(self) -> Pong:
        """A pong from the worker (fails if it does not answer)."""
        pong = ping(self.endpoint, REPLY_TIMEOUT_S)
        if pong is None:
            raise TimeoutError(f"worker at {self.endpoint} does not answer pings\n{self.process.log_tail()}")
        return pong


def worker_command() -> list[str]:
    """How to start a worker: ``python -m tandem.worker``, configured by ``TANDEM_*`` variables."""
    return [sys.executable, "-m", "tandem.worker"]


@contextmanager
def running_worker(
    *, registry_uri: str, models: str, home: Path, log_path: Path, **settings: object
) -> Iterator[RunningWorker]:
    """A worker subprocess on a free port, serving ``models``; yields once a pong says it is ready.

    ``settings`` are further ``WorkerSettings`` fields (``max_queue_rows=4`` sets ``TANDEM_MAX_QUEUE_ROWS``).
    """
    endpoint = free_endpoint()
    env = {
        "TANDEM_BIND": endpoint,
        "TANDEM_REGISTRY_URI": registry_uri,
        "TANDEM_MODELS": models,
        "TANDEM_HOME": str(home),
        **{f"TANDEM_{key.upper()}": str(value) for key, value in settings.items()},
    }
    with started(worker_command(), env=env, log_path=log_path) as process:

        def is_ready() -> bool:
            pong = ping(endpoint)
            return pong is not None and pong.ready

        wait_until(is_ready, what="ready worker", timeout_s=READY_TIMEOUT_S, process=process)
        yield RunningWorker(process, endpoint)
