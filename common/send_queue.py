"""Send a ZeroMQ socket's messages back to back, so that one wake-up of libzmq's I/O thread carries several.

A send that finds libzmq's I/O thread asleep wakes it (an eventfd write, then a thread switch on the receiving
core). Over loopback TCP on the project's 2-core machines, a message sent between other work cost ~36 us of
process CPU, one sent right after another ~10 us: the I/O thread finds several waiting per wake-up, and the
receiving side reads them from one TCP segment. A gateway under load sends one request per task, with a request
parsed between each; a worker answers a batch one reply at a time, encoding each. Both now queue such messages
and send them together: the gateway until the next turn of its event loop (``defer``), the worker until the
batch is answered (``held``). A message with nothing else in flight goes at once (``send``): deferring it would
only add the rest of the loop's turn to its latency.

Order is kept: ``send`` sends whatever is queued first.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Hashable, Iterator, Sequence

import zmq

from tandem.common.wire import Buffer

log = logging.getLogger("tandem.zmq")

Frames = Sequence[Buffer]
OnUnsent = Callable[[Hashable], None]

# Plain ints: pyzmq's flags are enum members, and combining them (``send_multipart`` ORs SNDMORE into each
# frame's flags) builds a new enum member each time, about 1 us a message.
_NOBLOCK = int(zmq.NOBLOCK)
_NOBLOCK_MORE = int(zmq.NOBLOCK) | int(zmq.SNDMORE)


def send_frames(socket: zmq.Socket, frames: Frames) -> None:
    """``socket.send_multipart(frames, zmq.NOBLOCK, copy=False)``: raises ``zmq.Again`` before its first frame
    when the socket cannot take the message; ZeroMQ then takes the rest of a multipart message whole."""
    *head, last = frames
    for frame in head:
        socket.send(frame, _NOBLOCK_MORE, copy=False)
    socket.send(last, _NOBLOCK, copy=False)


class SendQueue:
    """One socket's outgoing messages; only the event loop thread that owns the socket may use it.

    ``after_send`` runs after every send or batch of sends (``SocketReader.after_send``: ZeroMQ's descriptor is
    edge-triggered and a send may consume its signal). ``on_unsent`` is called with the token of a queued message
    the socket would not take when its turn came (``zmq.Again``: no peer, or the high-water mark); without it,
    such a message is logged and dropped.
    """

    def __init__(
        self, socket: zmq.Socket, *, after_send: Callable[[], None], on_unsent: OnUnsent | None = None
    ) -> None:
        self.socket = socket
        self._after_send = after_send
        self._on_unsent = on_unsent
        self._queued: list[tuple[Frames, Hashable]] = []
        self._flush_scheduled = False
        self._holding = False

    def __len__(self) -> int:
        return len(self._queued)

    def send(self, frames: Frames) -> None:
        """Send now, after anything queued; raises ``zmq.Again`` when the socket cannot take it.

        Inside ``held`` the message is queued instead (and never raises).
        """
        if self._holding:
            self._queued.append((frames, None))
            return
        try:
            if self._queued:
                self._send_queued()
            send_frames(self.socket, frames)
        finally:
            self._after_send()

    def defer(self, frames: Frames, token: Hashable = None) -> None:
        """Queue a message to go with the others sent in this turn of the loop, at the start of the next one."""
        self._queued.append((frames, token))
        if not self._flush_scheduled and not self._holding:
            self._flush_scheduled = True
            asyncio.get_running_loop().call_soon(self._scheduled_flush)

    @contextlib.contextmanager
    def held(self) -> Iterator[None]:
        """Queue every message sent inside; send them back to back on the way out."""
        self._holding = True
        try:
            yield
        finally:
            self._holding = False
            self.flush()

    def flush(self) -> None:
        """Send everything queued now, in order."""
        if not self._queued:
            return
        try:
            self._send_queued()
        finally:
            self._after_send()

    def _scheduled_flush(self) -> None:
        self._flush_scheduled = False
        self.flush()

    def _send_queued(self) -> None:
        queued, self._queued = self._queued, []
        if self.socket.closed:
            return
        for frames, token in queued:
            try:
                send_frames(self.socket, frames)
            except zmq.Again:
                if self._on_unsent is None:
                    log.warning("dropped a message the socket would not take")
                else:
                    self._on_unsent(token)
