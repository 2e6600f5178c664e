"""The gateway's event loop runs a turn's I/O callbacks before the callbacks queued in the turn before."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable

import pytest

from tandem.gateway.io_first_loop import IOFirstEventLoop


def order_of_a_read_and_a_queued_step(new_loop: Callable[[], asyncio.AbstractEventLoop]) -> list[str]:
    """In one turn, bytes reach a watched socket and a callback is queued: which runs first in the next turn."""
    loop = new_loop()
    reader, writer = socket.socketpair()
    ran: list[str] = []

    def on_readable() -> None:
        reader.recv(1)
        loop.remove_reader(reader.fileno())
        ran.append("read")

    def send_and_queue() -> None:
        writer.send(b"x")
        loop.call_soon(ran.append, "queued")  # a task step, say, queued during this turn

    try:
        loop.add_reader(reader.fileno(), on_readable)
        loop.call_soon(send_and_queue)
        loop.run_until_complete(asyncio.sleep(0.05))
    finally:
        loop.close()
        reader.close()
        writer.close()
    return ran


def test_the_read_runs_first_where_asyncios_own_loop_runs_it_last() -> None:
    assert order_of_a_read_and_a_queued_step(asyncio.SelectorEventLoop) == ["queued", "read"]
    assert order_of_a_read_and_a_queued_step(IOFirstEventLoop) == ["read", "queued"]


def test_every_callback_ready_at_a_turns_start_still_runs_in_that_turn() -> None:
    loop = IOFirstEventLoop()
    reader, writer = socket.socketpair()
    ran: list[str] = []
    loop.add_reader(reader.fileno(), lambda: ran.append(f"read {len(reader.recv(16))}"))

    def turn_one() -> None:
        writer.send(b"abc")
        loop.call_soon(ran.append, "first queued")
        loop.call_soon(ran.append, "second queued")
        loop.call_soon(loop.stop)  # the next turn ends the run: whatever it holds has run by then

    try:
        loop.call_soon(turn_one)
        loop.run_forever()
        assert ran == ["read 3", "first queued", "second queued"]
    finally:
        loop.remove_reader(reader.fileno())
        loop.close()
        reader.close()
        writer.close()


def test_streams_and_timers_work_on_it() -> None:
    async def round_trip() -> bytes:
        async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            writer.write(await reader.readline())
            await writer.drain()
            writer.close()

        server = await asyncio.start_server(echo, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"ping\n")
        await asyncio.sleep(0.01)
        answer = await asyncio.wait_for(reader.readline(), 5)
        writer.close()
        server.close()
        await server.wait_closed()
        return answer

    loop = IOFirstEventLoop()
    try:
        assert loop.run_until_complete(round_trip()) == b"ping\n"
    finally:
        loop.close()


@pytest.mark.parametrize("attribute", ["_process_events", "_ready"])
def test_the_cpython_details_it_relies_on_are_there(attribute: str) -> None:
    loop = asyncio.SelectorEventLoop()
    try:
        assert hasattr(loop, attribute)
    finally:
        loop.close()
