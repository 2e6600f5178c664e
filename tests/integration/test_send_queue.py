"""SendQueue over real ZeroMQ TCP sockets: deferred and held messages go together, in order; none is lost unseen."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Hashable

import pytest
import zmq

from tandem.common.send_queue import SendQueue

TIMEOUT_MS = 5000


def received(router: zmq.Socket, count: int) -> list[bytes]:
    bodies = []
    for _ in range(count):
        assert router.poll(TIMEOUT_MS), f"only {len(bodies)} of {count} messages arrived"
        _identity, body = router.recv_multipart()
        bodies.append(body)
    return bodies


class Counter:
    def __init__(self) -> None:
        self.calls = 0

    def __call__(self) -> None:
        self.calls += 1


def test_deferred_messages_go_together_at_the_next_turn_of_the_loop(zmq_pair: tuple[zmq.Socket, zmq.Socket]) -> None:
    router, dealer = zmq_pair
    after_send = Counter()
    queue = SendQueue(dealer, after_send=after_send)

    async def scenario() -> None:
        for body in (b"a", b"b", b"c"):
            queue.defer([body])
        assert len(queue) == 3 and after_send.calls == 0
        assert not router.poll(50)  # nothing left before the loop turned
        await asyncio.sleep(0)
        assert len(queue) == 0 and after_send.calls == 1

    asyncio.run(scenario())
    assert received(router, 3) == [b"a", b"b", b"c"]


def test_a_message_sent_now_goes_after_the_queued_ones(zmq_pair: tuple[zmq.Socket, zmq.Socket]) -> None:
    router, dealer = zmq_pair
    queue = SendQueue(dealer, after_send=Counter())

    async def scenario() -> None:
        queue.defer([b"first"])
        queue.defer([b"second"])
        queue.send([b"third"])
        assert len(queue) == 0

    asyncio.run(scenario())
    assert received(router, 3) == [b"first", b"second", b"third"]


def test_messages_sent_while_held_go_back_to_back_on_the_way_out(zmq_pair: tuple[zmq.Socket, zmq.Socket]) -> None:
    router, dealer = zmq_pair
    after_send = Counter()
    queue = SendQueue(dealer, after_send=after_send)
    with queue.held():
        queue.send([b"x"])
        queue.send([b"y"])
        assert len(queue) == 2 and after_send.calls == 0
        assert not router.poll(50)
    assert len(queue) == 0 and after_send.calls == 1
    assert received(router, 2) == [b"x", b"y"]


def test_a_message_the_socket_refuses_at_its_turn_is_reported_by_its_token() -> None:
    context = zmq.Context()
    dealer = context.socket(zmq.DEALER)
    dealer.setsockopt(zmq.LINGER, 0)
    dealer.setsockopt(zmq.IMMEDIATE, 1)
    dealer.connect("tcp://127.0.0.1:9")  # nothing listens there: the socket takes no message
    unsent: list[Hashable] = []
    queue = SendQueue(dealer, after_send=Counter(), on_unsent=unsent.append)
    try:
        with pytest.raises(zmq.Again):
            queue.send([b"now"])

        async def scenario() -> None:
            queue.defer([b"one"], "attempt-1")
            queue.defer([b"two"], "attempt-2")
            await asyncio.sleep(0)

        asyncio.run(scenario())
        assert unsent == ["attempt-1", "attempt-2"]
    finally:
        dealer.close(linger=0)
        context.term()


def test_without_a_handler_a_refused_message_is_logged(caplog: pytest.LogCaptureFixture) -> None:
    context = zmq.Context()
    dealer = context.socket(zmq.DEALER)
    dealer.setsockopt(zmq.LINGER, 0)
    dealer.setsockopt(zmq.IMMEDIATE, 1)
    dealer.connect("tcp://127.0.0.1:9")
    queue = SendQueue(dealer, after_send=Counter())
    try:
        with caplog.at_level(logging.WARNING, logger="tandem.zmq"), queue.held():
            queue.send([b"lost"])
        assert "would not take" in caplog.text
    finally:
        dealer.close(linger=0)
        context.term()


def test_nothing_is_sent_on_a_closed_socket(zmq_pair: tuple[zmq.Socket, zmq.Socket]) -> None:
    _router, dealer = zmq_pair
    unsent: list[Hashable] = []
    queue = SendQueue(dealer, after_send=Counter(), on_unsent=unsent.append)

    async def scenario() -> None:
        queue.defer([b"late"], "attempt")
        dealer.close(linger=0)  # a link closed in the same turn; its requests were failed by the pool
        await asyncio.sleep(0)

    asyncio.run(scenario())
    assert len(queue) == 0 and unsent == []
