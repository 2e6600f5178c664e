"""Reading a request body straight from ASGI messages, under a size limit."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable

import pytest
from starlette.requests import ClientDisconnect
from starlette.types import Message, Receive

from tandem.common.errors import BadRequest, PayloadTooLarge
from tandem.gateway.body import receive_body


def _receive(messages: Iterable[Message]) -> Receive:
    queue = list(messages)

    async def receive() -> Message:
        return queue.pop(0)

    return receive


def _read(messages: list[Message], headers: list[tuple[bytes, bytes]] | None = None, limit: int = 10) -> bytes:
    scope = {"type": "http", "headers": headers or []}
    return asyncio.run(receive_body(scope, _receive(messages), limit))


def test_a_body_in_one_message_or_in_chunks() -> None:
    assert _read([{"type": "http.request", "body": b"abc"}], [(b"content-length", b"3")]) == b"abc"
    chunks = [{"type": "http.request", "body": part, "more_body": True} for part in (b"ab", b"", b"cd")]
    assert _read([*chunks, {"type": "http.request", "body": b"e"}]) == b"abcde"


def test_a_declared_or_counted_size_over_the_limit_is_refused_before_it_is_all_read() -> None:
    with pytest.raises(PayloadTooLarge, match="request body is 11 bytes; the limit is 10"):
        _read([], [(b"content-length", b"11")])
    endless = [{"type": "http.request", "body": b"x" * 4, "more_body": True}] * 3  # no Content-Length
    with pytest.raises(PayloadTooLarge, match="exceeds the limit of 10 bytes"):
        _read(endless)


def test_a_malformed_length_and_a_client_gone_mid_body() -> None:
    with pytest.raises(BadRequest, match="Content-Length must be an integer, got 'ten'"):
        _read([], [(b"content-length", b"ten")])
    with pytest.raises(ClientDisconnect):
        _read([{"type": "http.request", "body": b"ab", "more_body": True}, {"type": "http.disconnect"}])
