"""The request log middleware: one record per request, its fields, request ids, and no raw identifiers."""

from __future__ import annotations

import asyncio
import json
import logging
import re

import httpx
import pytest
from fastapi import FastAPI, Request
from opentelemetry import context, trace
from opentelemetry.sdk.trace import TracerProvider
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from tandem.common.logs import JsonFormatter
from tandem.common.privacy import IdHasher
from tandem.gateway.request_log import RequestLogMiddleware

HASHER = IdHasher("test-salt")
LOGGER = "tandem.gateway.requests"
FIELDS = {"request_id", "method", "route", "status", "latency_ms", "model", "version", "api_key", "user", "trace_id"}


def _app() -> FastAPI:
    app = FastAPI()

    @app.post("/v2/models/{model}/infer")
    async def infer(request: Request, model: str) -> Response:
        request.state.model_version = "3"
        request.state.api_key = "team-a"
        return Response(request.headers["x-request-id"])

    @app.post("/v1/recommendations")
    async def recommend(request: Request) -> Response:
        body = await request.json()
        request.state.model = "ranker"
        request.state.user_hash = HASHER.hash_id(body["user_id"])
        return Response("{}", status_code=200)

    @app.get("/boom")
    async def boom() -> Response:
        raise RuntimeError("broken on purpose")

    app.add_middleware(Refuser)
    app.add_middleware(RequestLogMiddleware, hasher=HASHER)
    return app


class Refuser:
    """Answers 401 before routing when asked to, as the auth middleware does."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and (b"x-refuse", b"1") in scope["headers"]:
            await Response("no", status_code=401)(scope, receive, send)
            return
        await self.app(scope, receive, send)


def _call(method: str, path: str, **kwargs) -> httpx.Response:
    async def go() -> httpx.Response:
        transport = httpx.ASGITransport(app=_app(), raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://gateway") as client:
            return await client.request(method, path, **kwargs)

    return asyncio.run(go())


def _lines(caplog: pytest.LogCaptureFixture) -> list[dict]:
    formatter = JsonFormatter()
    return [json.loads(formatter.format(r)) for r in caplog.records if r.name == LOGGER]


def test_one_line_per_request_with_route_model_version_and_key(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger=LOGGER):
        answer = _call("POST", "/v2/models/ranker/infer", content=b"{}")
    (line,) = _lines(caplog)
    assert set(line) >= FIELDS
    assert line["msg"] == "POST /v2/models/{model}/infer 200"
    assert (line["route"], line["status"], line["model"], line["version"]) == (
        "/v2/models/{model}/infer",
        200,
        "ranker",
        "3",
    )
    assert line["api_key"] == "team-a" and line["user"] is None
    assert line["trace_id"] is None or re.fullmatch(r"[0-9a-f]{32}", line["trace_id"])  # set while tracing is on
    assert isinstance(line["latency_ms"], float) and line["latency_ms"] >= 0
    # A fresh id: the route saw it as a header, the caller gets it back, and it is the logged one.
    assert answer.text == answer.headers["x-request-id"] == line["request_id"]


def test_user_ids_and_caller_request_ids_are_logged_only_hashed(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger=LOGGER):
        answer = _call("POST", "/v1/recommendations", json={"user_id": "u00042"}, headers={"x-request-id": "mine-7"})
        _call("POST", "/v2/models/ranker/infer", content=b"{}", headers={"x-user-id": "u00043"})
    recommend, infer = _lines(caplog)
    assert answer.headers["x-request-id"] == "mine-7"
    assert recommend["request_id"] == HASHER.hash_id("mine-7")
    assert recommend["user"] == HASHER.hash_id("u00042") and recommend["model"] == "ranker"
    assert infer["user"] == HASHER.hash_id("u00043")
    text = "\n".join(r.getMessage() + json.dumps(r.__dict__, default=str) for r in caplog.records)
    assert "u00042" not in text and "u00043" not in text and "mine-7" not in text


def test_failures_and_unmatched_paths_are_logged(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger=LOGGER):
        assert _call("GET", "/boom").status_code == 500
        assert _call("GET", "/users/u00042").status_code == 404
        assert _call("POST", "/v2/models/ranker/infer", headers={"x-refuse": "1"}).status_code == 401
    boom, missing, refused = _lines(caplog)
    assert (boom["route"], boom["status"]) == ("/boom", 500)
    assert (missing["route"], missing["status"]) == ("unmatched", 404)
    assert "u00042" not in json.dumps(missing)
    assert (refused["route"], refused["status"]) == ("unmatched", 401)  # refused before routing


def test_the_trace_id_of_the_current_span_is_logged(caplog: pytest.LogCaptureFixture) -> None:
    span = TracerProvider().get_tracer("test").start_span("HTTP POST")
    app = _app()
    app.add_middleware(CurrentSpan, span=span)  # outside the request log, as the tracing middleware is

    async def go() -> None:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://gateway") as client:
            await client.post("/v2/models/ranker/infer", content=b"{}")

    with caplog.at_level(logging.INFO, logger=LOGGER):
        asyncio.run(go())
    span.end()
    (line,) = _lines(caplog)
    assert line["trace_id"] == format(span.get_span_context().trace_id, "032x")


class CurrentSpan:
    """Makes ``span`` the current span while the app runs, as ``gateway/tracing.py`` does with its server span."""

    def __init__(self, app: ASGIApp, span: trace.Span) -> None:
        self.app = app
        self.span = span

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        token = context.attach(trace.set_span_in_context(self.span))
        try:
            await self.app(scope, receive, send)
        finally:
            context.detach(token)
