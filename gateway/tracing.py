"""The gateway's server span: one per HTTP request, continuing the caller's trace when it sent ``traceparent``.

Child spans (feature lookup, one per worker attempt, hedges marked) start under it because it is the current span
while the route runs. With tracing off the span is non-recording and this middleware only passes the call on.
"""

from __future__ import annotations

import inspect
from typing import Any

from fastapi import FastAPI
from opentelemetry import context, trace
from opentelemetry.trace import SpanKind, StatusCode
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from tandem.common.tracing import extract, tracer

_TRACER = tracer("tandem.gateway")
_SERVER_ERROR = 500


def fastapi_telemetry_off() -> dict[str, Any]:
    """``FastAPI(...)`` keyword arguments that turn off FastAPI's own OpenTelemetry, where it has any.

    Newer FastAPI releases record a server span (and HTTP metrics) of their own for every request once a tracer
    provider is installed: with ``TracingMiddleware`` that made two server spans per request, ours nested under
    FastAPI's. FastAPI's check for a provider also costs ~3 us per request while tracing is off.
    """
    if "telemetry" not in inspect.signature(FastAPI.__init__).parameters:
        return {}
    return {"telemetry": {"tracing": False, "metrics": False, "logs": False}}


class TracingMiddleware:
    """Wraps each HTTP request in a server span named after its route."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        parent = None
        for name, value in scope["headers"]:
            if name == b"traceparent":
                parent = extract({"traceparent": value.decode("latin-1")})
                break
        span = _TRACER.start_span(f"HTTP {scope['method']}", context=parent, kind=SpanKind.SERVER)
        if not span.is_recording():
            await self.app(scope, receive, send)
            return
        status = _SERVER_ERROR

        async def send_and_remember(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        token = context.attach(trace.set_span_in_context(span))
        try:
            await self.app(scope, receive, send_and_remember)
        finally:
            context.detach(token)
            route = getattr(scope.get("route"), "path", scope["path"])
            span.update_name(f"{scope['method']} {route}")
            span.set_attribute("http.route", route)
            span.set_attribute("http.response.status_code", status)
            if status >= _SERVER_ERROR:
                span.set_status(StatusCode.ERROR)
            span.end()
