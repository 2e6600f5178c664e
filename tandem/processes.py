"""Starting and stopping child processes: used by ``tandem up`` (and by the test suite's helpers).

Each child runs in its own process group, so stopping it also stops whatever it spawned (the MLflow server
starts its own uvicorn workers). Stopping is SIGTERM to the group, then SIGKILL after a grace period.
"""

from __future__ import annotations

import contextlib
import os
import random
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import IO

# MLflow tries the network for telemetry unless told not to, and its server starts job runners we do not use.
QUIET_MLFLOW_ENV = {"MLFLOW_DISABLE_TELEMETRY": "true", "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
STOP_GRACE_S = 5.0
_POLL_S = 0.1
_EPHEMERAL_RANGE = Path("/proc/sys/net/ipv4/ip_local_port_range")
_EPHEMERAL_LOW_DEFAULT = 32768  # Linux's default, where the file cannot be read
_LOWEST_PICKED_PORT = 10000
_PICK_TRIES = 1000


def tandem_command(*args: str) -> list[str]:
    """The argv of a ``tandem`` subcommand, run by this interpreter."""
    return [sys.executable, "-m", "tandem", *args]


def child_environment(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """This process's environment plus the MLflow quieting variables and ``extra``."""
    env = dict(os.environ)
    env.update(QUIET_MLFLOW_ENV)
    env.setdefault("PYTHONUNBUFFERED", "1")
    if extra:
        env.update(extra)
    return env


def start(
    argv: Sequence[str], *, env: Mapping[str, str] | None = None, output: IO[bytes] | int | None = None
) -> subprocess.Popen[bytes]:
    """Start ``argv`` in a new process group with ``env`` (a full environment)."""
    return subprocess.Popen(
        list(argv),
        env=dict(env) if env is not None else child_environment(),
        stdout=output,
        stderr=subprocess.STDOUT if output is not None else None,
        start_new_session=True,
    )


def stop(process: subprocess.Popen[bytes], grace_s: float = STOP_GRACE_S) -> int | None:
    """SIGTERM the child's group, wait up to ``grace_s``, then SIGKILL it; returns the exit code."""
    if process.poll() is None:
        _signal_group(process, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=grace_s)
    # Grandchildren may outlive a child that exited at once: the group is killed in every case.
    _signal_group(process, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(timeout=grace_s)
    return process.returncode


def _signal_group(process: subprocess.Popen[bytes], signum: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signum)


def wait_http_ok(url: str, timeout_s: float, *, process: subprocess.Popen[bytes] | None = None) -> bool:
    """Poll ``url`` until it answers 200; False on timeout or when ``process`` exits first."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            return False
        with contextlib.suppress(urllib.error.URLError, OSError), urllib.request.urlopen(url, timeout=1.0) as answer:
            if answer.status == 200:
                return True
        time.sleep(_POLL_S)
    return False


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port free right now, below the kernel's ephemeral range, for a child to listen on.

    The kernel hands out ports from the ephemeral range for ``bind`` to port 0 and for the local end of every
    outgoing connection, so a port picked there can be taken by any process's next connection before the child
    binds it: a gateway's own connection to its worker once took the port it was about to listen on. Below that
    range only a process that names the port can take it.
    """
    low = ephemeral_port_low()
    rng = random.Random()
    for _ in range(_PICK_TRIES):
        port = rng.randrange(_LOWEST_PICKED_PORT, low)
        if port_is_free(host, port):
            return port
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:  # all taken: let the kernel choose
        sock.bind((host, 0))
        return sock.getsockname()[1]


def ephemeral_port_low() -> int:
    """The first port of the kernel's ephemeral range."""
    try:
        return int(_EPHEMERAL_RANGE.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return _EPHEMERAL_LOW_DEFAULT


def port_is_free(host: str, port: int) -> bool:
    """True when a TCP socket can bind ``port`` on ``host`` now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((host, port))
        except OSError:
            return False
        return True
