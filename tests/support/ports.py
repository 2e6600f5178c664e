"""Free local ports (never fixed numbers, each checked free by binding it), below the kernel's ephemeral range.

The kernel never hands those out for ``bind`` to port 0 or for an outgoing connection, so a port picked there
stays free until the process it was picked for binds it (``tandem.processes.free_port``).
"""

from __future__ import annotations

import random

from tandem.processes import ephemeral_port_low, free_port, port_is_free

LOCALHOST = "127.0.0.1"
_LOWEST_RUN_PORT = 20000
_PICK_TRIES = 1000

__all__ = ["LOCALHOST", "free_endpoint", "free_port", "free_port_run"]


def free_endpoint(host: str = LOCALHOST) -> str:
    """A ZeroMQ TCP endpoint on a free port."""
    return f"tcp://{host}:{free_port(host)}"


def free_port_run(count: int, host: str = LOCALHOST) -> int:
    """The first of ``count`` consecutive free TCP ports (``tandem up --gateways N`` takes port .. port+N-1)."""
    rng = random.Random()
    high = ephemeral_port_low()
    for _ in range(_PICK_TRIES):
        first = rng.randrange(_LOWEST_RUN_PORT, high - count)
        if all(port_is_free(host, port) for port in range(first, first + count)):
            return first
    raise RuntimeError(f"no {count} consecutive free ports in {_LOWEST_RUN_PORT}-{high}")
