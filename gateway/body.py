"""Reading request bodies under a size limit, before any parsing."""

from __future__ import annotations

from fastapi import Request

from tandem.common.errors import BadRequest, PayloadTooLarge


async def read_body(request: Request, limit_bytes: int) -> bytes:
    """The whole body; ``PayloadTooLarge`` as soon as it is known to exceed ``limit_bytes``."""
    declared = request.headers.get("content-length")
    if declared is not None:
        try:
            size = int(declared)
        except ValueError:
            raise BadRequest(f"Content-Length must be an integer, got {declared!r}") from None
        if size > limit_bytes:
            raise PayloadTooLarge(f"request body is {size} bytes; the limit is {limit_bytes}")
        return await request.body()
    # Chunked upload: count while reading so an endless body cannot exhaust memory.
    chunks: list[bytes] = []
    received = 0
    async for chunk in request.stream():
        received += len(chunk)
        if received > limit_bytes:
            raise PayloadTooLarge(f"request body exceeds the limit of {limit_bytes} bytes")
        chunks.append(chunk)
    return b"".join(chunks)
