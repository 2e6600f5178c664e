"""The coalescing transport: writes of one loop iteration leave as one write, in order, and close flushes."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest

from tandem.gateway.coalescing_transport import CoalescingTransport


class RecordingTransport(asyncio.Transport):
    def __init__(self) -> None:
        super().__init__()
        self.writes: list[bytes] = []
        self.events: list[str] = []
        self.closed = False
        self.buffered = 0

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.writes.append(bytes(data))
        self.events.append("write")

    def close(self) -> None:
        self.closed = True
        self.events.append("close")

    def abort(self) -> None:
        self.closed = True
        self.events.append("abort")

    def write_eof(self) -> None:
        self.events.append("eof")

    def is_closing(self) -> bool:
        return self.closed

    def get_write_buffer_size(self) -> int:
        return self.buffered

    def get_extra_info(self, name: str, default: object = None) -> object:
        return {"peername": ("127.0.0.1", 50000)}.get(name, default)


@pytest.fixture
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    loop = asyncio.new_event_loop()
    yield loop
    loop.close()


def _run_once(loop: asyncio.AbstractEventLoop) -> None:
    loop.run_until_complete(asyncio.sleep(0))


def test_writes_in_one_iteration_leave_as_one_write_in_order(loop: asyncio.AbstractEventLoop) -> None:
    inner = RecordingTransport()
    transport = CoalescingTransport(inner, loop)
    transport.write(b"HTTP/1.1 200 OK\r\n\r\n")
    transport.write(bytearray(b"bo"))
    transport.writelines([b"d", memoryview(b"y")])
    assert inner.writes == []  # nothing leaves before the loop runs its ready callbacks
    assert transport.get_write_buffer_size() == len(b"HTTP/1.1 200 OK\r\n\r\nbody")
    _run_once(loop)
    assert inner.writes == [b"HTTP/1.1 200 OK\r\n\r\nbody"]


def test_writes_in_later_iterations_are_later_writes(loop: asyncio.AbstractEventLoop) -> None:
    inner = RecordingTransport()
    transport = CoalescingTransport(inner, loop)
    transport.write(b"chunk 1")
    _run_once(loop)
    transport.write(b"chunk 2")
    _run_once(loop)
    assert inner.writes == [b"chunk 1", b"chunk 2"]


def test_a_caller_reusing_its_buffer_does_not_change_what_is_sent(loop: asyncio.AbstractEventLoop) -> None:
    inner = RecordingTransport()
    transport = CoalescingTransport(inner, loop)
    buffer = bytearray(b"first")
    transport.write(buffer)
    buffer[:] = b"XXXXX"
    _run_once(loop)
    assert inner.writes == [b"first"]


def test_close_sends_what_was_written_before_it(loop: asyncio.AbstractEventLoop) -> None:
    inner = RecordingTransport()
    transport = CoalescingTransport(inner, loop)
    transport.write(b"HTTP/1.1 431 \r\n\r\n")
    transport.close()
    assert inner.events == ["write", "close"]
    assert inner.writes == [b"HTTP/1.1 431 \r\n\r\n"]
    _run_once(loop)  # the scheduled flush finds nothing left
    assert inner.writes == [b"HTTP/1.1 431 \r\n\r\n"]


def test_write_eof_flushes_first(loop: asyncio.AbstractEventLoop) -> None:
    inner = RecordingTransport()
    transport = CoalescingTransport(inner, loop)
    transport.write(b"last")
    transport.write_eof()
    assert inner.events == ["write", "eof"]


def test_abort_drops_what_is_queued(loop: asyncio.AbstractEventLoop) -> None:
    inner = RecordingTransport()
    transport = CoalescingTransport(inner, loop)
    transport.write(b"never sent")
    transport.abort()
    _run_once(loop)
    assert inner.events == ["abort"]


def test_nothing_is_written_to_a_transport_already_closing(loop: asyncio.AbstractEventLoop) -> None:
    inner = RecordingTransport()
    transport = CoalescingTransport(inner, loop)
    transport.write(b"late")
    inner.closed = True  # the peer went away before the flush
    _run_once(loop)
    assert inner.writes == []


def test_empty_writes_schedule_nothing(loop: asyncio.AbstractEventLoop) -> None:
    inner = RecordingTransport()
    transport = CoalescingTransport(inner, loop)
    transport.write(b"")
    _run_once(loop)
    assert inner.writes == []


def test_everything_else_is_the_wrapped_transports(loop: asyncio.AbstractEventLoop) -> None:
    inner = RecordingTransport()
    inner.buffered = 7
    transport = CoalescingTransport(inner, loop)
    assert transport.get_extra_info("peername") == ("127.0.0.1", 50000)
    assert transport.get_write_buffer_size() == 7
    assert transport.is_closing() is False
