"""Start and stop subprocesses for tests, and wait for readiness by probing (never a fixed sleep)."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

STOP_TIMEOUT_S = 10.0
PROBE_INTERVAL_S = 0.05
LOG_TAIL_CHARS = 6000


def child_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment for a child process: ours, MLflow telemetry off, unbuffered output, plus ``extra``."""
    env = dict(os.environ)
    env["MLFLOW_DISABLE_TELEMETRY"] = "true"
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra or {})
    return env


@dataclass
class Process:
    """A started subprocess whose stdout and stderr go to ``log_path``."""

    popen: subprocess.Popen[bytes]
    log_path: Path

    @property
    def pid(self) -> int:
        """The process id."""
        return self.popen.pid

    def alive(self) -> bool:
        """True while the process has not exited."""
        return self.popen.poll() is None

    def log_tail(self, chars: int = LOG_TAIL_CHARS) -> str:
        """The end of the process's output, for failure messages."""
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except FileNotFoundError:
            return ""

    def signal(self, signum: int = signal.SIGTERM) -> None:
        """Send ``signum`` to the process if it still runs."""
        if self.alive():
            self.popen.send_signal(signum)

    def stop(self, timeout_s: float = STOP_TIMEOUT_S) -> int:
        """Terminate, wait up to ``timeout_s``, then kill; returns the exit code."""
        if self.alive():
            self.popen.terminate()
            try:
                return self.popen.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.popen.kill()
        return self.popen.wait()


@contextmanager
def started(
    args: Sequence[str],
    *,
    log_path: Path,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
) -> Iterator[Process]:
    """Run ``args`` for the duration of the block; the process is always stopped on exit."""
    with open(log_path, "wb") as log:
        popen = subprocess.Popen(
            list(args), stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=child_env(env), cwd=cwd
        )
        process = Process(popen, log_path)
        try:
            yield process
        finally:
            process.stop()


def wait_until(
    probe: Callable[[], bool],
    *,
    what: str,
    timeout_s: float,
    process: Process | None = None,
    interval_s: float = PROBE_INTERVAL_S,
) -> None:
    """Call ``probe`` until it returns True; fail early if ``process`` exits, or after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while True:
        if process is not None and not process.alive():
            raise RuntimeError(
                f"process exited with {process.popen.returncode} while waiting for {what}:\n{process.log_tail()}"
            )
        if probe():
            return
        if time.monotonic() > deadline:
            tail = process.log_tail() if process is not None else ""
            raise TimeoutError(f"no {what} after {timeout_s} s\n{tail}")
        time.sleep(interval_s)
