"""Free local ports, asked of the OS (never fixed numbers)."""

from __future__ import annotations

import random
import socket

LOCALHOST = "127.0.0.1"


def free_port(host: str = LOCALHOST) -> int:
    """A TCP port that was free a moment ago (bind to port 0, read it, release it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def free_endpoint(host: str = LOCALHOST) -> str:
    """A ZeroMQ TCP endpoint on a free port."""
    return f"tcp://{host}:{free_port(host)}"


# Below Linux's default ephemeral range (32768-60999): the kernel never hands these out for bind(0) or for an
# outgoing connection, so a run of them that is free now stays free unless another test names it explicitly.
_RUN_RANGE = (20000, 32000)


def free_port_run(count: int, host: str = LOCALHOST) -> int:
    """The first of ``count`` consecutive free TCP ports (``tandem up --gateways N`` takes port .. port+N-1)."""
    rng = random.Random()
    for _ in range(1000):
        first = rng.randrange(_RUN_RANGE[0], _RUN_RANGE[1] - count)
        if all(_bindable(host, port) for port in range(first, first + count)):
            return first
    raise RuntimeError(f"no {count} consecutive free ports in {_RUN_RANGE}")


def _bindable(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((host, port))
        except OSError:
            return False
        return True
