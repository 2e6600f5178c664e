"""Helpers of the model-lifecycle tests: versions of ``Scale`` in a registry, aliases, pongs, process memory."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tandem.common.wire import InferRequest, Pong, Reply, Tensor
from tandem.demo.test_models import Scale, Unloadable
from tests.support.registry import Registry, register_model, tensor_signature
from tests.support.workers import DealerClient

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

import mlflow

SCALE = "scale"
WIDTH = 4
KIB = 1024
SIGNATURE = tensor_signature({"x": (np.dtype(np.float32), (-1, WIDTH))}, {"y": (np.dtype(np.float32), (-1, WIDTH))})
EXAMPLE = np.linspace(-1, 1, 2 * WIDTH, dtype=np.float32).reshape(2, WIDTH)


def register_scale(
    registry: Registry, factor: float, *, ballast_bytes: int = 0, aliases: tuple[str, ...] = (), name: str = SCALE
) -> str:
    """Register ``Scale(factor)`` as a new version of ``name``; returns the version."""
    module = Scale(factor, ballast_bytes)
    return register_model(registry, name, module, signature=SIGNATURE, input_example=EXAMPLE, aliases=aliases)


def register_unloadable(registry: Registry, *, aliases: tuple[str, ...] = (), name: str = SCALE) -> str:
    """Register a version whose artifact fails to load; returns the version."""
    return register_model(registry, name, Unloadable(), signature=SIGNATURE, input_example=None, aliases=aliases)


def set_alias(registry: Registry, alias: str, version: str, name: str = SCALE) -> None:
    """Point ``name@alias`` at ``version``."""
    client = mlflow.MlflowClient(tracking_uri=registry.uri, registry_uri=registry.uri)
    client.set_registered_model_alias(name, alias, version)


def entries(pong: Pong, name: str = SCALE) -> list[dict[str, Any]]:
    """The pong's entries for model ``name``."""
    return [m for m in pong.models if m["name"] == name]


def live_version(pong: Pong, alias: str, name: str = SCALE) -> str | None:
    """The version the worker serves ``name@alias`` with, per its pong."""
    for entry in entries(pong, name):
        if alias in entry["aliases"]:
            return str(entry["version"])
    return None


def lifecycle(pong: Pong, name: str = SCALE) -> dict[str, Any]:
    """The worker's lifecycle counters of ``name`` (empty while no version of it is listed: an in-place swap)."""
    found = entries(pong, name)
    return found[0]["lifecycle"] if found else {}


def memory_kib(pid: int) -> dict[str, int]:
    """``VmRSS`` and ``VmHWM`` (peak RSS) of a process, in KiB."""
    figures = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            figures[key] = int(value.split()[0])
    return figures


def reset_peak(pid: int) -> None:
    """Reset a process's peak RSS (``VmHWM``) to its current RSS."""
    Path(f"/proc/{pid}/clear_refs").write_text("5")


@dataclass
class Answer:
    """One reply the load saw: what it sent, what came back, and when it was sent."""

    x: np.ndarray
    reply: Reply
    sent_at: float


@dataclass
class WorkerLoad:
    """Steady load on one worker: ``concurrency`` requests always in flight on one DEALER, until stopped."""

    endpoint: str
    concurrency: int = 8
    version: str | None = None
    answers: list[Answer] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        sent: dict[str, tuple[np.ndarray, float]] = {}
        count = 0
        with DealerClient(self.endpoint) as client:

            def send() -> None:
                nonlocal count
                count += 1
                x = np.full((1 + count % 3, WIDTH), float(1 + count % 97), np.float32)
                request_id = f"r{count}"
                sent[request_id] = (x, time.monotonic())
                client.send(InferRequest(request_id, SCALE, self.version, 10_000.0, [Tensor.from_numpy("x", x)]))

            for _ in range(self.concurrency):
                send()
            while sent:
                try:
                    reply = client.recv()
                except TimeoutError:
                    self.errors.append("a request got no answer")
                    return
                if not isinstance(reply, Reply):
                    continue
                x, sent_at = sent.pop(reply.request_id)
                self.answers.append(Answer(x, reply, sent_at))
                if not self._stop.is_set():
                    send()

    def stop(self) -> None:
        self._stop.set()


@contextmanager
def steady_load(endpoint: str, **options: Any) -> Iterator[WorkerLoad]:
    """Run a ``WorkerLoad`` in a thread for the duration of the block; joined (all answers in) on exit."""
    load = WorkerLoad(endpoint, **options)
    thread = threading.Thread(target=load.run, name="steady-load")
    thread.start()
    try:
        yield load
    finally:
        load.stop()
        thread.join(timeout=30)


def scaled(x: np.ndarray, factor: float) -> np.ndarray:
    """What ``Scale(factor)`` computes for ``x``."""
    with torch.inference_mode():
        return Scale(factor)(torch.from_numpy(x)).numpy()
