"""SocketReader over real ZeroMQ TCP sockets: every message reaches the callback, none is stranded by the FD's edge."""

from __future__ import annotations

import asyncio
import logging
import threading

import pytest
import zmq

from tandem.common.socket_reader import MAX_MESSAGES_PER_WAKE, SocketReader

TIMEOUT_S = 10.0


async def _until(condition, what: str) -> None:
    deadline = asyncio.get_running_loop().time() + TIMEOUT_S
    while not condition():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.001)


def test_reads_messages_sent_before_and_after_start(zmq_pair: tuple[zmq.Socket, zmq.Socket]) -> None:
    router, dealer = zmq_pair
    got: list[bytes] = []

    async def scenario() -> None:
        dealer.send(b"hello")
        identity, _ = router.recv_multipart()
        router.send_multipart([identity, b"early"])  # waits in the dealer before anyone reads
        await asyncio.sleep(0.05)
        reader = SocketReader(dealer, lambda frames: got.append(frames[0].bytes), name="test")
        reader.start()
        await _until(lambda: got == [b"early"], "the early message")
        router.send_multipart([identity, b"late"])
        await _until(lambda: got == [b"early", b"late"], "the late message")
        reader.stop()

    asyncio.run(scenario())


def test_many_round_trips_with_sends_on_the_read_socket(zmq_pair: tuple[zmq.Socket, zmq.Socket]) -> None:
    """The gateway's pattern: sends on the socket being read while replies arrive; none may be stranded."""
    router, dealer = zmq_pair
    rounds, window = 3000, 32
    replies: list[int] = []
    stop = threading.Event()

    def echo() -> None:
        while not stop.is_set():
            if router.poll(10):
                router.send_multipart(router.recv_multipart())

    async def scenario() -> None:
        in_flight = asyncio.Semaphore(window)

        def on_reply(frames: list[zmq.Frame]) -> None:
            replies.append(int(frames[0].bytes))
            in_flight.release()

        reader = SocketReader(dealer, on_reply, name="test")
        reader.start()
        for i in range(rounds):
            await asyncio.wait_for(in_flight.acquire(), TIMEOUT_S)
            dealer.send(str(i).encode())
            reader.after_send()
        await _until(lambda: len(replies) == rounds, f"{rounds} replies")
        reader.stop()

    echo_thread = threading.Thread(target=echo, daemon=True)
    echo_thread.start()
    try:
        asyncio.run(scenario())
    finally:
        stop.set()
        echo_thread.join()
    assert sorted(replies) == list(range(rounds))


def test_a_flood_is_read_in_turns_without_loss(zmq_pair: tuple[zmq.Socket, zmq.Socket]) -> None:
    router, dealer = zmq_pair
    count = 3 * MAX_MESSAGES_PER_WAKE + 7
    got: list[int] = []
    wakes_with_other_work: list[int] = []

    async def scenario() -> None:
        dealer.send(b"hello")
        identity, _ = router.recv_multipart()
        for i in range(count):
            router.send_multipart([identity, str(i).encode()])
        await asyncio.sleep(0.1)
        reader = SocketReader(dealer, lambda frames: got.append(int(frames[0].bytes)), name="test")
        reader.start()

        async def other_work() -> None:
            while len(got) < count:
                wakes_with_other_work.append(len(got))
                await asyncio.sleep(0)

        await asyncio.wait_for(other_work(), TIMEOUT_S)
        reader.stop()

    asyncio.run(scenario())
    assert got == list(range(count))
    # The loop ran other callbacks between batches, not only after the whole flood.
    assert any(0 < seen < count for seen in wakes_with_other_work)


def test_a_failing_callback_is_logged_and_later_messages_still_arrive(
    zmq_pair: tuple[zmq.Socket, zmq.Socket], caplog: pytest.LogCaptureFixture
) -> None:
    router, dealer = zmq_pair
    got: list[bytes] = []

    def on_message(frames: list[zmq.Frame]) -> None:
        if frames[0].bytes == b"bad":
            raise ValueError("cannot handle this one")
        got.append(frames[0].bytes)

    async def scenario() -> None:
        reader = SocketReader(dealer, on_message, name="flaky")
        reader.start()
        dealer.send(b"hello")
        reader.after_send()
        identity, _ = router.recv_multipart()
        router.send_multipart([identity, b"bad"])
        router.send_multipart([identity, b"good"])
        await _until(lambda: got == [b"good"], "the message after the failing one")
        reader.stop()

    with caplog.at_level(logging.ERROR, logger="tandem.zmq"):
        asyncio.run(scenario())
    assert any("error handling a message on flaky" in r.getMessage() for r in caplog.records)


def test_stopped_reader_reads_nothing(zmq_pair: tuple[zmq.Socket, zmq.Socket]) -> None:
    router, dealer = zmq_pair
    got: list[bytes] = []

    async def scenario() -> None:
        reader = SocketReader(dealer, lambda frames: got.append(frames[0].bytes), name="test")
        reader.start()
        dealer.send(b"hello")
        reader.after_send()
        identity, _ = router.recv_multipart()
        reader.stop()
        router.send_multipart([identity, b"after stop"])
        await asyncio.sleep(0.1)

    asyncio.run(scenario())
    assert got == []
    assert dealer.poll(1000) == zmq.POLLIN  # still there for whoever reads next
