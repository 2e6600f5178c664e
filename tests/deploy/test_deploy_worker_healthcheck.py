"""deploy/docker/worker_healthcheck.py against a stand-in worker: a real ZeroMQ ROUTER on an ephemeral port."""

from __future__ import annotations

import importlib.util
import threading
import time
from collections.abc import Iterator
from types import ModuleType

import pytest
import zmq

from tandem.common import wire
from tests.deploy.support import DEPLOY

SHORT_TIMEOUT_S = 0.3
ANSWER_TIMEOUT_S = 5.0


@pytest.fixture(scope="module")
def healthcheck() -> ModuleType:
    spec = importlib.util.spec_from_file_location("worker_healthcheck", DEPLOY / "docker" / "worker_healthcheck.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class StandInWorker:
    """Answers each ping with a pong carrying ``ready`` (or never answers, with ``silent``), on a loop thread."""

    def __init__(self, *, ready: bool = True, silent: bool = False, garbage: bool = False) -> None:
        self.context = zmq.Context()
        self.socket = self.context.socket(zmq.ROUTER)
        self.socket.setsockopt(zmq.LINGER, 0)
        port = self.socket.bind_to_random_port("tcp://127.0.0.1")
        self.endpoint = f"tcp://127.0.0.1:{port}"
        self.ready, self.silent, self.garbage = ready, silent, garbage
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while not self.stopping.is_set():
            if not self.socket.poll(timeout=50):
                continue
            identity, *frames = self.socket.recv_multipart()
            ping = wire.decode(frames)
            if self.silent or not isinstance(ping, wire.Ping):
                continue
            if self.garbage:
                self.socket.send_multipart([identity, b"\xc1not msgpack"])
                continue
            pong = wire.Pong(seq=ping.seq, worker_id="w-test", ready=self.ready, queued_rows=0, inflight=0, models=[])
            self.socket.send_multipart([identity, *wire.encode(pong)])

    def close(self) -> None:
        self.stopping.set()
        self.thread.join(timeout=2)
        self.socket.close(linger=0)
        self.context.term()


@pytest.fixture
def worker(request: pytest.FixtureRequest) -> Iterator[StandInWorker]:
    stand_in = StandInWorker(**getattr(request, "param", {}))
    yield stand_in
    stand_in.close()


@pytest.mark.parametrize("worker", [{"ready": True}], indirect=True)
def test_ready_worker_is_healthy(healthcheck: ModuleType, worker: StandInWorker) -> None:
    assert healthcheck.main([worker.endpoint, "--require-ready", "--timeout-s", str(ANSWER_TIMEOUT_S)]) == 0


@pytest.mark.parametrize("worker", [{"ready": False}], indirect=True)
def test_loading_worker_is_alive_but_not_ready(healthcheck: ModuleType, worker: StandInWorker) -> None:
    assert healthcheck.main([worker.endpoint, "--timeout-s", str(ANSWER_TIMEOUT_S)]) == 0
    assert healthcheck.main([worker.endpoint, "--require-ready", "--timeout-s", str(ANSWER_TIMEOUT_S)]) == 1


@pytest.mark.parametrize("worker", [{"silent": True}], indirect=True)
def test_silent_worker_is_unhealthy_within_the_timeout(healthcheck: ModuleType, worker: StandInWorker) -> None:
    started = time.monotonic()
    assert healthcheck.main([worker.endpoint, "--timeout-s", str(SHORT_TIMEOUT_S)]) == 1
    assert time.monotonic() - started < SHORT_TIMEOUT_S + 1.0


@pytest.mark.parametrize("worker", [{"garbage": True}], indirect=True)
def test_malformed_answer_is_unhealthy(healthcheck: ModuleType, worker: StandInWorker) -> None:
    assert healthcheck.main([worker.endpoint, "--timeout-s", str(ANSWER_TIMEOUT_S)]) == 1


def test_default_endpoint_is_the_workers_own_bind_on_loopback(
    healthcheck: ModuleType, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert healthcheck.local_endpoint("tcp://0.0.0.0:5555") == "tcp://127.0.0.1:5555"
    assert healthcheck.local_endpoint("tcp://*:6000") == "tcp://127.0.0.1:6000"
    assert healthcheck.local_endpoint("tcp://10.0.0.7:5555") == "tcp://10.0.0.7:5555"
    with pytest.raises(ValueError):
        healthcheck.local_endpoint("ipc-no-port")
    seen = []
    monkeypatch.setenv("TANDEM_BIND", "tcp://0.0.0.0:5999")
    monkeypatch.setattr(healthcheck, "check", lambda endpoint, **_: (seen.append(endpoint) or True, "ok"))
    assert healthcheck.main([]) == 0
    assert seen == ["tcp://127.0.0.1:5999"]
