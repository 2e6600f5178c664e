"""Request limits checked by the gateway, each answered with a clear 4xx naming the limit.

Where each limit of ``GatewaySettings`` is enforced:

============================  ======  =====================================================================
setting                       status  where
============================  ======  =====================================================================
``max_header_bytes``          431     the HTTP parser (``gateway/http_protocol.py``), before the app runs
``max_body_bytes``            413     ``BodyLimitMiddleware`` here, for every route, before a route reads
``max_tensor_elements``       413     ``v2_codec.parse_infer_request`` (``max_elements``)
``max_request_rows``          413     ``check_infer_limits`` here, after parsing
``max_string_bytes``          413     ``check_infer_limits``: the longest element of a BYTES input
``max_request_id_chars``      400     ``check_infer_limits``: the V2 request ``id``
``max_candidates``            400     ``routes/recommendations.py``
============================  ======  =====================================================================

The worker bounds what it accepts on its own (``max_tensor_bytes``, ``max_frame_bytes``, ``max_queue_rows``):
a gateway is not trusted to have checked.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable

import orjson
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from tandem.common.datatypes import BYTES, element_count
from tandem.common.errors import BadRequest, PayloadTooLarge
from tandem.common.settings import GatewaySettings
from tandem.gateway.v2_codec import ParsedInferRequest

_LENGTH_PREFIX = struct.Struct("<I")
CONTENT_LENGTH = b"content-length"
_MAX_LENGTH_DIGITS = 20
"""Longer Content-Length values are malformed (and would be slow to convert: ``int`` of long text is quadratic)."""


def check_infer_limits(parsed: ParsedInferRequest, settings: GatewaySettings) -> None:
    """Refuse a parsed V2 infer request past the row, string-length or id-length limits."""
    if parsed.id is not None and len(parsed.id) > settings.max_request_id_chars:
        raise BadRequest(f"request id has {len(parsed.id)} characters; the limit is {settings.max_request_id_chars}")
    for tensor in parsed.inputs:
        rows = tensor.shape[0] if tensor.shape else 1
        if rows > settings.max_request_rows:
            raise PayloadTooLarge(
                f"input {tensor.name!r} has {rows} rows; the limit is {settings.max_request_rows} per request"
            )
        if tensor.datatype == BYTES:
            longest = longest_bytes_element(tensor.data, element_count(tensor.shape))
            if longest > settings.max_string_bytes:
                raise PayloadTooLarge(
                    f"input {tensor.name!r} has a {longest}-byte element; the limit is {settings.max_string_bytes}"
                )


def longest_bytes_element(data: bytes | memoryview, count: int) -> int:
    """The length of the longest element of already-validated BYTES data (walks the prefixes, copies nothing)."""
    view = memoryview(data).cast("B")
    longest = offset = 0
    for _ in range(count):
        if offset + _LENGTH_PREFIX.size > view.nbytes:
            break
        (length,) = _LENGTH_PREFIX.unpack_from(view, offset)
        longest = max(longest, length)
        offset += _LENGTH_PREFIX.size + length
    return longest


class BodyLimitMiddleware:
    """413 for any request whose body exceeds ``max_body_bytes``, on every route.

    A declared ``Content-Length`` past the limit is refused before anything is read. A chunked body is counted
    as the route reads it: past the limit, reading raises ``HTTPException(413)``, which the app's error handlers
    answer (FastAPI re-raises HTTP exceptions from body parsing rather than turning them into 400s).
    """

    def __init__(self, app: ASGIApp, max_body_bytes: int) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.max_body_bytes
        declared = next((value for name, value in scope["headers"] if name == CONTENT_LENGTH), None)
        if declared is not None:
            size = int(declared) if declared.isdigit() and len(declared) <= _MAX_LENGTH_DIGITS else None
            if size is None:
                await send_json_error(send, 400, "Content-Length must be a non-negative integer")
            elif size > limit:
                await send_json_error(send, 413, f"request body is {size} bytes; the limit is {limit}")
            else:
                await self.app(scope, receive, send)
            return
        received = 0

        async def counted() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise HTTPException(413, f"request body exceeds the limit of {limit} bytes")
            return message

        await self.app(scope, counted, send)


async def send_json_error(send: Send, status: int, message: str, headers: Iterable[tuple[bytes, bytes]] = ()) -> None:
    """Answer from an ASGI middleware with the gateway's error body, ``{"error": message}``."""
    body = orjson.dumps({"error": message})
    start = [(b"content-type", b"application/json"), (CONTENT_LENGTH, str(len(body)).encode()), *headers]
    await send({"type": "http.response.start", "status": status, "headers": start})
    await send({"type": "http.response.body", "body": body})
