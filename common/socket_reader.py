"""Hand every message a ZeroMQ socket receives to a callback on the event loop, without a future per message.

``zmq.asyncio`` gives each receive and each send its own future and wakes a task to read it; for a gateway that
sends and receives one small message per request, that bookkeeping cost about a tenth of its CPU. Here a plain
socket's file descriptor is registered with the loop once, and a wake-up drains every message waiting.

ZeroMQ's descriptor is edge-triggered and any operation on the socket, a send included, may consume its signal:
after a send the owner calls ``after_send`` so that a reply that arrived meanwhile is not left waiting for an
edge that already passed (the rule pyzmq's own asyncio sockets follow).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

import zmq

log = logging.getLogger("tandem.zmq")

OnMessage = Callable[[list[zmq.Frame]], None]

# Plain ints: pyzmq's constants are enum members, and ``events & zmq.POLLIN`` or ``recv_multipart`` build a new
# enum member per use, about 1 us a message.
_EVENTS = int(zmq.EVENTS)
_POLLIN = int(zmq.POLLIN)
_NOBLOCK = int(zmq.NOBLOCK)

# Messages handled per wake-up before the loop gets a turn: a flood of replies must not starve the HTTP side.
MAX_MESSAGES_PER_WAKE = 256


class SocketReader:
    """Calls ``on_message`` with each multipart message ``socket`` receives, from the running loop's thread."""

    def __init__(self, socket: zmq.Socket, on_message: OnMessage, *, name: str) -> None:
        self.socket = socket
        self.name = name
        self._on_message = on_message
        self._loop: asyncio.AbstractEventLoop | None = None
        self._drain_scheduled = False

    def start(self) -> None:
        """Watch the socket on the running loop; messages that arrived before now are read at once."""
        loop = asyncio.get_running_loop()
        self._loop = loop
        loop.add_reader(self.socket.FD, self.drain)
        self._schedule_drain()

    def stop(self) -> None:
        """Stop watching (before the socket is closed)."""
        if self._loop is not None and not self.socket.closed:
            self._loop.remove_reader(self.socket.FD)
        self._loop = None

    def after_send(self) -> None:
        """Call after each send on this socket: reads a message whose arrival the send's bookkeeping hid."""
        if self._loop is not None and self.socket.getsockopt(_EVENTS) & _POLLIN:
            self._schedule_drain()

    def drain(self) -> None:
        """Read and hand on every message waiting; one that makes the callback fail is logged and dropped."""
        self._drain_scheduled = False
        socket = self.socket
        if self._loop is None or socket.closed:
            return
        for _ in range(MAX_MESSAGES_PER_WAKE):
            if not socket.getsockopt(_EVENTS) & _POLLIN:
                return
            try:
                frame = socket.recv(_NOBLOCK, copy=False)
            except zmq.Again:
                return
            frames = [frame]
            # The rest of a multipart message is there once its first part is. ``Frame.more`` is read from the
            # message itself: a getsockopt(RCVMORE) per part cost ~0.6 us.
            while frame.more:
                frame = socket.recv(_NOBLOCK, copy=False)
                frames.append(frame)
            try:
                self._on_message(frames)
            except Exception:
                log.exception("error handling a message on %s", self.name)
            if self._loop is None or socket.closed:  # the callback stopped this reader
                return
        self._schedule_drain()  # more are waiting: read them after the loop's other ready callbacks

    def _schedule_drain(self) -> None:
        # Deferred, not run inside the send: the sender's own bookkeeping finishes before replies are handled.
        if not self._drain_scheduled and self._loop is not None:
            self._drain_scheduled = True
            self._loop.call_soon(self.drain)
