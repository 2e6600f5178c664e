"""``tandem up``: the whole local stack as child processes, on embedded defaults.

Order: the registry (an MLflow server over a sqlite file and local artifacts in ``--home``, or no server at all
with ``--no-registry-server``), the demo bootstrap when the registry has no ranker yet, the workers, then the
gateways. Each child is the same ``tandem`` subcommand the compose file runs. It returns when a signal asks it
to stop or any child exits, and always stops every child it started.
"""

from __future__ import annotations

import logging
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from tandem.common.settings import sqlite_registry_uri
from tandem.processes import child_environment, free_port, start, stop, tandem_command, wait_http_ok

log = logging.getLogger("tandem.up")

REGISTRY_START_TIMEOUT_S = 120.0
STACK_READY_TIMEOUT_S = 180.0
LOCALHOST = "127.0.0.1"
DEMO_MODELS = "ranker@champion,echo@champion"
WATCH_INTERVAL_S = 0.5


@dataclass(slots=True)
class UpOptions:
    home: Path
    port: int = 8000
    workers: int = 1
    gateways: int = 1
    registry_port: int = 0
    registry_server: bool = True
    host: str = LOCALHOST


class Stack:
    """The children of one ``tandem up``."""

    def __init__(self, options: UpOptions) -> None:
        self.options = options
        self.children: list[tuple[str, subprocess.Popen[bytes]]] = []
        self.registry_uri = sqlite_registry_uri(options.home)
        self.gateway_urls: list[str] = []
        self.env = child_environment({"TANDEM_HOME": str(options.home)})

    def _spawn(
        self, name: str, *args: str, log_file: Path | None = None, env: dict[str, str] | None = None
    ) -> subprocess.Popen[bytes]:
        output = open(log_file, "ab") if log_file is not None else None  # noqa: SIM115 (held by the child)
        process = start(tandem_command(*args), env={**self.env, **(env or {})}, output=output)
        if output is not None:
            output.close()
        self.children.append((name, process))
        log.info("started %s (pid %d)", name, process.pid)
        return process

    def start_registry(self) -> None:
        """The MLflow server children and gateways never talk to directly: workers and the bootstrap do."""
        port = self.options.registry_port or free_port()
        # The MLflow server logs every artifact download: keep that out of the terminal.
        log_file = self.options.home / "registry.log"
        process = self._spawn(
            "registry", "registry", "--home", str(self.options.home), "--port", str(port), log_file=log_file
        )
        if not wait_http_ok(f"http://{LOCALHOST}:{port}/health", REGISTRY_START_TIMEOUT_S, process=process):
            raise RuntimeError(f"the MLflow registry did not start; see {log_file}")
        self.registry_uri = f"http://{LOCALHOST}:{port}"
        log.info("MLflow registry and UI at %s (log: %s)", self.registry_uri, log_file)

    def bootstrap(self) -> None:
        """Register the demo models unless the registry already has them (a one-shot child)."""
        result = subprocess.run(
            tandem_command(
                "models", "bootstrap", "--home", str(self.options.home), "--registry-uri", self.registry_uri
            ),
            env=self.env,
            check=False,
        )
        if result.returncode != 0:
            raise RuntimeError("the demo bootstrap failed; see its output above")

    def start_workers(self) -> list[str]:
        """Start the workers on free ports; returns their ZeroMQ endpoints."""
        endpoints = []
        for index in range(self.options.workers):
            endpoint = f"tcp://{LOCALHOST}:{free_port()}"
            metrics_port = free_port()
            self._spawn(
                f"worker-{index}",
                "worker",
                "--home",
                str(self.options.home),
                "--bind",
                endpoint,
                "--registry-uri",
                self.registry_uri,
                "--models",
                DEMO_MODELS,
                env={"TANDEM_METRICS_PORT": str(metrics_port)},
            )
            log.info("worker-%d metrics at http://%s:%d/metrics", index, LOCALHOST, metrics_port)
            endpoints.append(endpoint)
        return endpoints

    def start_gateways(self, endpoints: list[str]) -> None:
        """Start the gateways: the first on ``--port``, the others on the following ports."""
        for index in range(self.options.gateways):
            port = self.options.port + index if self.options.port else free_port()
            self._spawn(
                f"gateway-{index}",
                "gateway",
                "--home",
                str(self.options.home),
                "--host",
                self.options.host,
                "--port",
                str(port),
                "--workers",
                ",".join(endpoints),
            )
            self.gateway_urls.append(f"http://{LOCALHOST}:{port}")

    def wait_ready(self) -> None:
        """Block until every gateway answers ready."""
        processes = dict(self.children)
        for index, url in enumerate(self.gateway_urls):
            # Given its process, the wait ends as soon as a gateway dies (say, its port is taken).
            gateway = processes[f"gateway-{index}"]
            if not wait_http_ok(f"{url}/v2/health/ready", STACK_READY_TIMEOUT_S, process=gateway):
                exited = "" if gateway.poll() is None else f" (it exited with code {gateway.poll()})"
                raise RuntimeError(f"the gateway at {url} did not become ready{exited}; see the output above")

    def first_exited(self) -> tuple[str, int] | None:
        """The name and exit code of a child that has exited, if any."""
        for name, process in self.children:
            code = process.poll()
            if code is not None:
                return name, code
        return None

    def stop(self) -> None:
        """Stop children in reverse start order: gateways first, the registry last."""
        for name, process in reversed(self.children):
            code = stop(process)
            log.info("stopped %s (exit %s)", name, code)
        self.children.clear()


class StopRequested(Exception):
    """SIGINT or SIGTERM arrived."""


def _request_stop(signum: int, frame: object) -> None:
    # Raised in the main thread wherever it is (a readiness wait, the watch loop), so start-up can be cut short.
    raise StopRequested


def run_up(options: UpOptions) -> int:
    """Run the stack until SIGINT/SIGTERM or a child's exit; returns the exit status."""
    options.home.mkdir(parents=True, exist_ok=True)
    signals = (signal.SIGINT, signal.SIGTERM)
    previous = {sig: signal.signal(sig, _request_stop) for sig in signals}
    stack = Stack(options)
    try:
        if options.registry_server:
            stack.start_registry()
        stack.bootstrap()
        endpoints = stack.start_workers()
        stack.start_gateways(endpoints)
        stack.wait_ready()
        print(f"Tandem is serving at {stack.gateway_urls[0]} (registry: {stack.registry_uri})", flush=True)
        log.info("to require API keys: `tandem keys api`, then TANDEM_API_KEYS=<its entry> (docs/security.md)")
        while True:
            time.sleep(WATCH_INTERVAL_S)
            exited = stack.first_exited()
            if exited is not None:
                log.error("%s exited with status %s; stopping the stack", *exited)
                return 1
    except StopRequested:
        log.info("stopping")
        return 0
    except RuntimeError as exc:
        log.error("%s", exc)
        return 1
    finally:
        # A second Ctrl-C must not interrupt the clean-up that guarantees no process is left behind.
        for sig in signals:
            signal.signal(sig, signal.SIG_IGN)
        stack.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
