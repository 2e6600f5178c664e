"""A transport wrapper that joins the writes of one loop iteration into one ``write`` on the socket.

uvicorn writes a response's status line and headers, then its body, as two ``transport.write`` calls. With
TCP_NODELAY each is its own send system call and its own TCP segment, which on loopback also runs the
receiver's TCP processing inline, and wakes the client twice. Small responses are the gateway's whole
business, so that second write was a measurable share of its CPU per request.

``CoalescingTransport.write`` buffers and schedules one flush with ``loop.call_soon``: everything written until
the loop next runs its ready callbacks goes out as one write, in order. Nothing waits for more data, so no
latency is added beyond the current loop iteration (a streamed body chunk written after an ``await`` is
flushed by the next iteration, as it would have been written). ``close`` and ``write_eof`` flush first, and
every other call goes to the wrapped transport, so the protocol's flow control (``pause_writing`` on a full
buffer) works as before: it sees the real buffer once the flush lands there.
"""

from __future__ import annotations

import asyncio
from typing import Any


class CoalescingTransport:
    """Wraps ``transport`` for a protocol: writes issued in one loop iteration leave as one write."""

    __slots__ = ("_loop", "_pending", "_scheduled", "_transport")

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._loop = loop
        self._pending: list[bytes] = []
        self._scheduled = False

    def write(self, data: bytes | bytearray | memoryview) -> None:
        """Queue ``data``; the whole queue is written when the loop next runs its ready callbacks."""
        if not data:
            return
        self._pending.append(bytes(data))
        if not self._scheduled:
            self._scheduled = True
            self._loop.call_soon(self.flush)

    def writelines(self, list_of_data: Any) -> None:
        """Queue every chunk, as ``write`` does."""
        for data in list_of_data:
            self.write(data)

    def flush(self) -> None:
        """Write everything queued now, as one write (dropped if the connection is already closing)."""
        self._scheduled = False
        if not self._pending:
            return
        data = self._pending[0] if len(self._pending) == 1 else b"".join(self._pending)
        self._pending.clear()
        if not self._transport.is_closing():
            self._transport.write(data)

    def get_write_buffer_size(self) -> int:
        """Bytes not yet sent: those queued here and those in the wrapped transport's buffer."""
        return sum(map(len, self._pending)) + self._transport.get_write_buffer_size()

    def write_eof(self) -> None:
        """Flush, then half-close."""
        self.flush()
        self._transport.write_eof()

    def close(self) -> None:
        """Flush, then close: a response written just before ``close`` is still sent."""
        self.flush()
        self._transport.close()

    def abort(self) -> None:
        """Close at once, dropping what is queued (as the wrapped transport's ``abort`` drops its buffer)."""
        self._pending.clear()
        self._transport.abort()

    def __getattr__(self, name: str) -> Any:
        # Everything else (is_closing, pause_reading, get_extra_info, set_protocol, ...) is the transport's own.
        return getattr(self._transport, name)
