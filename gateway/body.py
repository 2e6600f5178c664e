"""Reading request bodies under a size limit, before any parsing."""

from __future__ import annotations

from fastapi import Request
from starlette.requests import ClientDisconnect
from starlette.types import Receive, Scope

from tandem.common.errors import BadRequest, PayloadTooLarge

_CONTENT_LENGTH = b"content-length"


async def read_body(request: Request, limit_bytes: int) -> bytes:
    """The whole body; ``PayloadTooLarge`` as soon as it is known to exceed ``limit_bytes``."""
    return await receive_body(request.scope, request.receive, limit_bytes)


async def receive_body(scope: Scope, receive: Receive, limit_bytes: int) -> bytes:
    """``read_body`` straight from ASGI messages, without a Starlette ``Request`` (~3 us less a call).

    Raises ``ClientDisconnect`` when the client goes away before the body is complete.
    """
    declared = None
    for name, value in scope["headers"]:
        if name == _CONTENT_LENGTH:
            declared = value
            break
    if declared is not None:
        try:
            size = int(declared)
        except ValueError:
            raise BadRequest(f"Content-Length must be an integer, got {declared.decode('latin-1')!r}") from None
        if size > limit_bytes:
            raise PayloadTooLarge(f"request body is {size} bytes; the limit is {limit_bytes}")
    # Counted while reading too, so an endless chunked upload cannot exhaust memory.
    chunks: list[bytes] = []
    received = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientDisconnect()
        chunk = message.get("body", b"")
        received += len(chunk)
        if received > limit_bytes:
            raise PayloadTooLarge(f"request body exceeds the limit of {limit_bytes} bytes")
        if not message.get("more_body", False):
            if not chunks:
                return chunk
            chunks.append(chunk)
            return b"".join(chunks)
        chunks.append(chunk)
