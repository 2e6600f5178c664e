"""The whole stack as real processes: a sqlite MLflow registry, workers and a gateway over real HTTP.

The registry is bootstrapped once per session (training the demo ranker takes seconds); each test module gets its
own workers and gateway on free ports, and every process is stopped in teardown.
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import zmq

from tandem.common import wire
from tandem.common.settings import sqlite_registry_uri
from tandem.processes import child_environment, free_port, start, stop, tandem_command, wait_http_ok

SERVED_MODELS = "ranker@champion,echo@champion,sleeper@champion"
START_TIMEOUT_S = 90.0


@dataclass
class Registry:
    home: Path
    uri: str


@pytest.fixture(scope="session")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Registry:
    """A sqlite registry holding the demo models, and the demo catalog, in a fresh home."""
    home = tmp_path_factory.mktemp("tandem-home")
    uri = sqlite_registry_uri(home)
    subprocess.run(
        tandem_command("models", "bootstrap", "--home", str(home), "--registry-uri", uri),
        env=child_environment(),
        check=True,
        capture_output=True,
    )
    return Registry(home, uri)


def ping_worker(endpoint: str, timeout_s: float = 1.0) -> wire.Pong | None:
    """One ping over a fresh DEALER socket; the worker's pong, or None when it does not answer in time."""
    context = zmq.Context.instance()
    sock = context.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    try:
        sock.connect(endpoint)
        sock.send_multipart(wire.encode(wire.Ping(1)))
        if sock.poll(int(timeout_s * 1000)):
            message = wire.decode(sock.recv_multipart())
            return message if isinstance(message, wire.Pong) else None
        return None
    finally:
        sock.close()


def wait_worker_ready(endpoint: str, process: subprocess.Popen[bytes], timeout_s: float = START_TIMEOUT_S) -> None:
    """Block until the worker at ``endpoint`` reports its models loaded."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"worker at {endpoint} exited with {process.returncode}")
        pong = ping_worker(endpoint, timeout_s=0.5)
        if pong is not None and pong.ready:
            return
    raise RuntimeError(f"worker at {endpoint} not ready after {timeout_s} s")


@dataclass
class Stack:
    registry: Registry
    logs: Path
    workers: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    gateways: list[tuple[str, subprocess.Popen[bytes]]] = field(default_factory=list)
    worker_args: tuple[str, ...] = ()

    @property
    def url(self) -> str:
        return self.gateways[0][0]

    def start_worker(self, endpoint: str | None = None, *extra: str) -> str:
        endpoint = endpoint or f"tcp://127.0.0.1:{free_port()}"
        log = open(self.logs / f"worker-{endpoint.rsplit(':', 1)[1]}.log", "ab")  # noqa: SIM115 (kept by the process)
        process = start(
            tandem_command(
                "worker",
                "--home",
                str(self.registry.home),
                "--registry-uri",
                self.registry.uri,
                "--bind",
                endpoint,
                "--models",
                SERVED_MODELS,
                *self.worker_args,
                *extra,
            ),
            env=child_environment({"TANDEM_TORCH_THREADS": "1"}),
            output=log,
        )
        self.workers[endpoint] = process
        wait_worker_ready(endpoint, process)
        return endpoint

    def start_gateway(self, *extra: str) -> str:
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        log = open(self.logs / f"gateway-{port}.log", "ab")  # noqa: SIM115 (kept by the process)
        process = start(
            tandem_command(
                "gateway",
                "--home",
                str(self.registry.home),
                "--port",
                str(port),
                "--workers",
                ",".join(self.workers),
                *extra,
            ),
            env=child_environment(),
            output=log,
        )
        self.gateways.append((url, process))
        if not wait_http_ok(f"{url}/v2/health/ready", START_TIMEOUT_S, process=process):
            raise RuntimeError(f"gateway at {url} did not become ready; see {log.name}")
        return url

    def kill_worker(self, endpoint: str) -> None:
        process = self.workers[endpoint]
        process.kill()
        process.wait()

    def stop(self) -> None:
        for _, process in self.gateways:
            stop(process)
        for process in self.workers.values():
            stop(process)


@pytest.fixture
def make_stack(registry: Registry, tmp_path: Path) -> Iterator[object]:
    """A factory of stacks (N workers + one gateway); all are stopped at teardown."""
    stacks: list[Stack] = []

    def build(workers: int = 1, gateway_args: tuple[str, ...] = (), worker_args: tuple[str, ...] = ()) -> Stack:
        stack = Stack(registry, tmp_path, worker_args=worker_args)
        stacks.append(stack)
        for _ in range(workers):
            stack.start_worker()
        stack.start_gateway(*gateway_args)
        return stack

    yield build
    for stack in stacks:
        stack.stop()


@pytest.fixture(scope="module")
def shared_stack(registry: Registry, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """Two workers and a gateway shared by the tests of one module that do not break them."""
    stack = Stack(registry, tmp_path_factory.mktemp("stack-logs"))
    try:
        stack.start_worker()
        stack.start_worker()
        stack.start_gateway()
        yield stack
    finally:
        stack.stop()


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if Path(str(item.fspath)).parent.name == "e2e":
            item.add_marker(pytest.mark.e2e)


os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
