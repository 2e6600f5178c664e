"""Peer serving systems measured in the same run (``make bench-peers``): Mosec and LitServe.

Each peer is installed from PyPI into its own virtual environment (``venv_for``), created once under
``$TANDEM_BENCH_VENVS`` (default ``~/.cache/tandem/bench-venvs``) with the same torch and numpy versions as this
environment, plus this repository installed editable without dependencies, so the peer can unpickle the very
modules Tandem serves (``tandem.demo.ranker``, ``tandem.demo.minilm``). The benchmark saves each model with
``torch.save`` (``export_model``) and the peer's server script (``mosec_server.py``, ``litserve_server.py``, run by
the peer's interpreter) loads that file and serves it with its own dynamic batching on the same V2 path and JSON
body as every other system.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from benchmarks.stack import BenchHome, Server, torch_threads_env, wait_ready_http
from tandem.processes import child_environment, free_port, start

REPO = Path(__file__).resolve().parents[2]
VENVS_ENV = "TANDEM_BENCH_VENVS"
INSTALL_TIMEOUT_S = 900


@dataclass(frozen=True)
class Peer:
    """A peer: its PyPI requirement, its server script, and the path it answers readiness on."""

    name: str
    requirement: str
    script: str
    ready_path: str


PEERS = {
    "mosec": Peer("mosec", "mosec==0.9.8", "mosec_server.py", "/"),
    "litserve": Peer("litserve", "litserve==0.2.19", "litserve_server.py", "/health"),
}


def venvs_root() -> Path:
    return Path(os.environ.get(VENVS_ENV) or Path.home() / ".cache" / "tandem" / "bench-venvs")


def _pins() -> list[str]:
    import numpy
    import torch

    return [f"torch=={torch.__version__.split('+')[0]}", f"numpy=={numpy.__version__}"]


def venv_for(peer: Peer, log: Path) -> Path:
    """The peer's interpreter, installing its environment first when missing or out of date."""
    venv = venvs_root() / peer.name
    python = venv / "bin" / "python"
    wanted = " ".join([peer.requirement, *_pins()])
    marker = venv / ".tandem-bench"
    stamp = hashlib.sha256(f"{wanted} {REPO}".encode()).hexdigest()
    if python.exists() and marker.exists() and marker.read_text() == stamp:
        return python
    with open(log, "ab") as output:
        base = getattr(sys, "_base_executable", sys.executable)
        steps = [
            [base, "-m", "venv", "--clear", str(venv)],
            [str(python), "-m", "pip", "install", "--quiet", *_pins(), peer.requirement],
            [str(python), "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation", "-e", str(REPO)],
        ]
        for step in steps:
            subprocess.run(step, check=True, stdout=output, stderr=subprocess.STDOUT, timeout=INSTALL_TIMEOUT_S)
    marker.write_text(stamp)
    return python


def export_model(module: object, path: Path) -> Path:
    """Save ``module`` whole (pickled) for a peer to ``torch.load``."""
    import torch

    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(module, path)
    return path


def start_peer(
    home: BenchHome, peer: Peer, model_file: Path, model: str, *, max_batch_size: int, max_wait_ms: float,
    torch_threads: int = 1,
) -> Server:  # fmt: skip
    """Run ``peer`` serving ``model_file`` on ``/v2/models/{model}/infer``, batching up to ``max_batch_size``."""
    python = venv_for(peer, home.log(f"{peer.name}-install"))
    server = Server(peer.name, free_port())
    argv = [
        str(python), str(Path(__file__).parent / peer.script), "--port", str(server.port),
        "--model-file", str(model_file), "--model", model, "--max-batch-size", str(max_batch_size),
        "--max-wait-ms", str(max_wait_ms), "--torch-threads", str(torch_threads),
    ]  # fmt: skip
    log = home.log(f"{peer.name}-{model}")
    env = child_environment({**torch_threads_env(torch_threads), "PYTHONPATH": ""})
    server.processes.append(start(argv, env=env, output=open(log, "ab")))  # noqa: SIM115 (held by the child)
    return wait_ready_http(server, peer.ready_path, log)
