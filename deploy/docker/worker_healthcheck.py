"""Health check of one Tandem worker: send one ``ping`` over ZeroMQ and wait for its ``pong``.

Used by the worker image's ``HEALTHCHECK`` and by the Kubernetes readiness probe (an exec probe), so it speaks the
real wire protocol (``tandem.common.wire``) rather than merely opening a TCP connection.

Usage: ``python worker_healthcheck.py [ENDPOINT] [--require-ready] [--timeout-s S]``.

- ``ENDPOINT`` defaults to the worker's own bind address (``TANDEM_BIND``, read through ``WorkerSettings``) with a
  wildcard host (``0.0.0.0``, ``*``, ``::``) replaced by loopback.
- Exit status 0: the worker answered the ping (with ``--require-ready``: and reported itself ready, its models
  loaded). Exit status 1: no answer within the timeout, a malformed answer, or not ready when ready was required.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import zmq

from tandem.common import wire
from tandem.common.errors import WireError
from tandem.common.settings import WorkerSettings

DEFAULT_TIMEOUT_S = 3.0
WILDCARD_HOSTS = ("0.0.0.0", "*", "::", "[::]")
LOOPBACK = "127.0.0.1"
HEALTHY = 0
UNHEALTHY = 1


def local_endpoint(bind: str) -> str:
    """The endpoint to reach a worker bound at ``bind`` from inside its own container."""
    scheme, sep, rest = bind.partition("://")
    host, colon, port = rest.rpartition(":")
    if not sep or not colon:
        raise ValueError(f"not a ZeroMQ tcp endpoint: {bind!r}")
    if host in WILDCARD_HOSTS:
        host = LOOPBACK
    return f"{scheme}://{host}:{port}"


def check(endpoint: str, *, require_ready: bool, timeout_s: float) -> tuple[bool, str]:
    """Ping ``endpoint`` once; returns (healthy, a one-line reason)."""
    seq = os.getpid()
    deadline = time.monotonic() + timeout_s
    context = zmq.Context.instance()
    socket = context.socket(zmq.DEALER)
    socket.setsockopt(zmq.LINGER, 0)
    try:
        socket.connect(endpoint)
        socket.send_multipart(wire.encode(wire.Ping(seq=seq)))
        while (left_s := deadline - time.monotonic()) > 0:
            if not socket.poll(timeout=int(left_s * 1000) + 1):
                break
            try:
                message = wire.decode(socket.recv_multipart())
            except WireError as exc:
                return False, f"malformed answer from {endpoint}: {exc}"
            if isinstance(message, wire.Pong) and message.seq == seq:
                if require_ready and not message.ready:
                    return False, f"worker {message.worker_id} at {endpoint} answers but is not ready"
                return True, f"worker {message.worker_id} at {endpoint} answers (ready={message.ready})"
        return False, f"no pong from {endpoint} within {timeout_s:g} s"
    finally:
        socket.close(linger=0)


def main(argv: list[str] | None = None) -> int:
    """Run the check; the exit status says healthy (0) or not (1)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("endpoint", nargs="?", help="worker endpoint (default: from TANDEM_BIND)")
    parser.add_argument("--require-ready", action="store_true", help="also require the worker's models loaded")
    parser.add_argument("--timeout-s", type=float, default=DEFAULT_TIMEOUT_S, help="how long to wait for the pong")
    args = parser.parse_args(argv)
    endpoint = args.endpoint or local_endpoint(WorkerSettings().bind)
    healthy, reason = check(endpoint, require_ready=args.require_ready, timeout_s=args.timeout_s)
    print(reason, file=sys.stdout if healthy else sys.stderr)
    return HEALTHY if healthy else UNHEALTHY


if __name__ == "__main__":
    raise SystemExit(main())
