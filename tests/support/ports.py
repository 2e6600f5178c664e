"""Free local ports, asked of the OS (never fixed numbers)."""

from __future__ import annotations

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
