"""A whole Tandem stack as real processes (workers and gateways over a shared registry), for end-to-end tests."""

from __future__ import annotations

import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from tandem.processes import child_environment, free_port, start, stop, tandem_command, wait_http_ok
from tests.support.workers import ping

SERVED_MODELS = "ranker@champion,echo@champion,sleeper@champion"
START_TIMEOUT_S = 90.0


@dataclass
class Registry:
    home: Path
    uri: str


def wait_worker_ready(endpoint: str, process: subprocess.Popen[bytes], timeout_s: float = START_TIMEOUT_S) -> None:
    """Block until the worker at ``endpoint`` reports its models loaded."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"worker at {endpoint} exited with {process.returncode}")
        pong = ping(endpoint, timeout_s=0.5)
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

    def start_worker(
        self,
        endpoint: str | None = None,
        *extra: str,
        models: str = SERVED_MODELS,
        env: dict[str, str] | None = None,
    ) -> str:
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
                models,
                *self.worker_args,
                *extra,
            ),
            env=child_environment({"TANDEM_TORCH_THREADS": "1", "TANDEM_METRICS_PORT": "0", **(env or {})}),
            output=log,
        )
        self.workers[endpoint] = process
        wait_worker_ready(endpoint, process)
        return endpoint

    def start_gateway(self, *extra: str, env: dict[str, str] | None = None) -> str:
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
            env=child_environment(env),
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


def rss_kib(pid: int) -> int:
    """Resident memory of a process, from /proc."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for pid {pid}")
