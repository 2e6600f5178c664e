"""The gateway's request limits: V2 infer rows, BYTES element and id lengths, and the body size on every route."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import httpx
import numpy as np
import pytest
from fastapi import FastAPI, Request
from pydantic import BaseModel
from starlette.responses import Response

from tandem.common.datatypes import encode_bytes_elements
from tandem.common.errors import BadRequest, PayloadTooLarge
from tandem.common.settings import GatewaySettings
from tandem.common.wire import Tensor
from tandem.gateway.http_errors import install_error_handlers
from tandem.gateway.limits import BodyLimitMiddleware, check_infer_limits, longest_bytes_element
from tandem.gateway.v2_codec import ParsedInferRequest

LIMIT = 100


def _parsed(*inputs: Tensor, request_id: str | None = None) -> ParsedInferRequest:
    return ParsedInferRequest(
        id=request_id, inputs=list(inputs), outputs=None, binary_output_default=False, parameters={}
    )


def _strings(*items: bytes) -> Tensor:
    return Tensor("s", "BYTES", (len(items),), encode_bytes_elements(list(items)))


SETTINGS = GatewaySettings(max_request_rows=4, max_string_bytes=8, max_request_id_chars=5)


def test_a_request_within_every_limit_passes() -> None:
    rows = Tensor.from_numpy("x", np.zeros((4, 3), np.float32))
    check_infer_limits(_parsed(rows, _strings(b"12345678", b""), request_id="abcde"), SETTINGS)


def test_too_many_rows_is_413_naming_the_input_and_the_limit() -> None:
    with pytest.raises(PayloadTooLarge, match=r"'x' has 5 rows; the limit is 4"):
        check_infer_limits(_parsed(Tensor.from_numpy("x", np.zeros((5, 1), np.float32))), SETTINGS)


def test_a_long_bytes_element_is_413() -> None:
    with pytest.raises(PayloadTooLarge, match="9-byte element; the limit is 8"):
        check_infer_limits(_parsed(_strings(b"ok", b"123456789")), SETTINGS)


def test_a_long_request_id_is_400() -> None:
    with pytest.raises(BadRequest, match="6 characters; the limit is 5") as caught:
        check_infer_limits(_parsed(Tensor.from_numpy("x", np.zeros((1,), np.float32)), request_id="abcdef"), SETTINGS)
    assert caught.value.http_status == 400


def test_the_longest_bytes_element_is_found_without_decoding() -> None:
    assert longest_bytes_element(encode_bytes_elements([b"a", b"abcd", b""]), 3) == 4
    assert longest_bytes_element(memoryview(encode_bytes_elements([])), 0) == 0


# ------------------------------------------------------------------------------------------------ body size


class _Body(BaseModel):
    text: str


def _app() -> FastAPI:
    app = FastAPI()

    @app.post("/parsed")
    async def parsed(body: _Body) -> dict[str, int]:
        return {"length": len(body.text)}

    @app.post("/raw")
    async def raw(request: Request) -> Response:
        return Response(str(len(await request.body())))

    install_error_handlers(app)
    app.add_middleware(BodyLimitMiddleware, max_body_bytes=LIMIT)
    return app


def _post(path: str, **kwargs: Any) -> httpx.Response:
    async def send() -> httpx.Response:
        transport = httpx.ASGITransport(app=_app())
        async with httpx.AsyncClient(transport=transport, base_url="http://gateway") as client:
            return await client.post(path, **kwargs)

    return asyncio.run(send())


def _chunks(total: int, size: int = 10) -> AsyncIterator[bytes]:
    async def generate() -> AsyncIterator[bytes]:
        for start in range(0, total, size):
            yield b"x" * min(size, total - start)

    return generate()


@pytest.mark.parametrize("path", ["/parsed", "/raw"])
def test_a_declared_body_past_the_limit_is_413_before_it_is_read(path: str) -> None:
    answer = _post(path, content=b"x" * (LIMIT + 1))
    assert answer.status_code == 413
    assert answer.json() == {"error": f"request body is {LIMIT + 1} bytes; the limit is {LIMIT}"}


@pytest.mark.parametrize("path", ["/parsed", "/raw"])
def test_a_chunked_body_past_the_limit_is_413_as_it_is_read(path: str) -> None:
    answer = _post(path, content=_chunks(LIMIT * 3), headers={"content-type": "application/json"})
    assert answer.status_code == 413
    assert "limit of 100 bytes" in answer.json()["error"]


def test_bodies_within_the_limit_reach_the_route() -> None:
    assert _post("/parsed", json={"text": "x" * 50}).json() == {"length": 50}
    assert _post("/raw", content=_chunks(LIMIT)).text == str(LIMIT)


def test_a_malformed_content_length_is_400() -> None:
    answer = _post("/raw", content=b"x", headers={"content-length": "1x"})
    assert answer.status_code == 400
    assert "Content-Length" in answer.json()["error"]
