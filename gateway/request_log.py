"""One structured log line per HTTP request, with no personal data.

``RequestLogMiddleware`` (pure ASGI, outermost, so refusals by auth, limits and admission are logged too) writes
one INFO record on the ``tandem.gateway.requests`` logger when a request ends; with ``common/logs.py``'s JSON
formatter it is one line::

    {"ts": "...", "level": "INFO", "logger": "tandem.gateway.requests", "msg": "POST /v1/recommendations 200",
     "request_id": "9f0c...", "method": "POST", "route": "/v1/recommendations", "status": 200,
     "latency_ms": 3.12, "model": "ranker", "version": "1", "api_key": "team-a", "user": "3f9c0a6e1b2d4c57",
     "trace_id": null}

- ``route`` is the route template (``/v2/models/{model}/infer``), never the raw path: a path may carry anything.
  A request no route served (no route matches, or auth, limits or admission refused it first) is ``unmatched``.
- ``request_id``: the caller's ``x-request-id`` hashed (caller-chosen ids are identifiers, ``common/privacy.py``),
  else a fresh unique id. Either way the request goes on with ``x-request-id`` set (a fresh id is added to the
  request's headers, so ``/v1/recommendations`` answers with it) and the response carries the caller's id or
  the fresh one in its ``x-request-id`` header.
- ``model`` / ``version``: the path's, or what a route put in ``request.state.model`` /
  ``request.state.model_version`` (the version that answered).
- ``api_key``: the name of the caller's key (``gateway/auth.py`` puts it in ``request.state.api_key``).
- ``user``: ``request.state.user_hash``, which a route sets to the *hashed* user id, else the ``x-user-id``
  header (a V2 caller's user, for sticky traffic splits), hashed here.
- ``trace_id``: the request's trace when tracing is on (this middleware runs inside the server span), to join
  a log line with its spans.

Bodies are never read or logged. Unset fields are null, so every line has the same keys.
"""

from __future__ import annotations

import itertools
import logging
import os
import time
from typing import Any

from opentelemetry import trace
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from tandem.common.logs import log_line
from tandem.common.privacy import IdHasher
from tandem.gateway.traffic import USER_ID_HEADER

log = logging.getLogger("tandem.gateway.requests")

REQUEST_ID_HEADER = b"x-request-id"
_USER_HEADER = USER_ID_HEADER.encode()
UNMATCHED_ROUTE = "unmatched"
_MS_PER_S = 1000.0
_LATENCY_DECIMALS = 3
# Fresh request ids: 32 hex digits like a uuid4's, unique without a random draw (a system call) per request: a
# random prefix per process, then a counter.
_ID_PREFIX = os.urandom(8).hex()
_ID_COUNTER = itertools.count()


class RequestLogMiddleware:
    """Logs every HTTP request once it is answered (see the module docstring)."""

    def __init__(self, app: ASGIApp, hasher: IdHasher) -> None:
        self.app = app
        self.hasher = hasher

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        state = scope.setdefault("state", {})  # the dict routes and auth write into, read back below
        caller_id = _header(scope, REQUEST_ID_HEADER)
        if caller_id is None:
            request_id = f"{_ID_PREFIX}{next(_ID_COUNTER):016x}"
            scope["headers"] = [*scope.get("headers", ()), (REQUEST_ID_HEADER, request_id.encode())]
            response_id = request_id
        else:
            request_id = self.hasher.hash_id(caller_id)
            response_id = caller_id
        status = 500  # what the client gets when the app raises before answering

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                headers = [h for h in message.get("headers", ()) if h[0].lower() != REQUEST_ID_HEADER]
                message = {**message, "headers": [*headers, (REQUEST_ID_HEADER, response_id.encode("latin-1"))]}
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            fields = request_fields(scope, state, request_id, status, time.perf_counter() - started)
            if fields["user"] is None and (user := _header(scope, _USER_HEADER)) is not None:
                fields["user"] = self.hasher.hash_id(user)
            log_line(log, logging.INFO, f"{fields['method']} {fields['route']} {status}", fields)


def request_fields(scope: Scope, state: dict[str, Any], request_id: str, status: int, elapsed_s: float) -> dict:
    """The fields of one request's log line (no body, no raw identifiers)."""
    route = scope.get("route")
    params = scope.get("path_params") or {}
    span = trace.get_current_span().get_span_context()
    return {
        "request_id": request_id,
        "method": scope.get("method", ""),
        "route": getattr(route, "path", UNMATCHED_ROUTE),
        "status": status,
        "latency_ms": round(elapsed_s * _MS_PER_S, _LATENCY_DECIMALS),
        "model": params.get("model") or state.get("model"),
        "version": state.get("model_version") or params.get("version"),
        "api_key": state.get("api_key"),
        "user": state.get("user_hash"),
        "trace_id": format(span.trace_id, "032x") if span.is_valid else None,
    }


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", ()):
        if key.lower() == name:
            return value.decode("latin-1")
    return None
