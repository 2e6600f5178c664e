"""V2 infer, once: the steps every infer call takes, and the lean ASGI path that serves it.

``run_infer`` is the whole call after the body is read: parse, check limits, route, ask a worker, build the
answer. Two doors lead to it. ``routes/v2.py`` keeps the FastAPI route, which documents the endpoint in the
OpenAPI schema and serves it when the fast path is off. ``InferFastPath`` is a pure ASGI layer placed inside the
gateway's own middlewares (auth, admission, body limit, metrics, request log, tracing all still apply) that
answers ``POST /v2/models/{model}[/versions/{version}]/infer`` itself, skipping Starlette's routing and FastAPI's
request wrapping and dependency solving: measured here, those layers cost more CPU per call than the call's own
work (parse, worker round trip, response) on a light model.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from functools import partial
from typing import Any

from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Receive, Scope, Send

from tandem.common.errors import error_from_code
from tandem.common.wire import InferRequest
from tandem.gateway.body import receive_body
from tandem.gateway.deadlines import TIMEOUT_HEADER, Deadline, deadline_from_header
from tandem.gateway.http_errors import error_parts
from tandem.gateway.limits import check_infer_limits, send_json_error
from tandem.gateway.state import GatewayState
from tandem.gateway.traffic import USER_ID_HEADER, Traffic
from tandem.gateway.v2_codec import HEADER_LENGTH_HEADER, build_infer_response, parse_infer_request

try:
    from fastapi.telemetry._api import _route_selected
except ImportError:  # a FastAPI without native telemetry
    _route_selected = None

log = logging.getLogger("tandem.gateway")

JSON = "application/json"
BINARY = "application/octet-stream"
INFER_PATH = "/v2/models/{model}/infer"
INFER_VERSION_PATH = "/v2/models/{model}/versions/{version}/infer"
_TIMEOUT = TIMEOUT_HEADER.encode()
_HEADER_LENGTH = HEADER_LENGTH_HEADER.lower().encode()
_USER_ID = USER_ID_HEADER.encode()


@dataclass(frozen=True, slots=True)
class InferHeaders:
    """The request headers an infer call reads."""

    timeout_ms: str | None = None
    header_length: str | None = None
    user_id: str | None = None


@dataclass(frozen=True, slots=True)
class InferAnswer:
    """The response body, its media type and, for the binary extension, the JSON part's length."""

    content: bytes
    media_type: str
    json_length: int | None


def deadline_for(state: GatewayState, headers: InferHeaders) -> Deadline:
    """The call's deadline: the caller's timeout header within the configured bounds, from now."""
    settings = state.settings
    return deadline_from_header(
        headers.timeout_ms, default_ms=settings.request_timeout_ms, max_ms=settings.max_request_timeout_ms
    )


async def run_infer(
    state: GatewayState,
    traffic: Traffic,
    model: str,
    version: str | None,
    body: bytes,
    headers: InferHeaders,
    deadline: Deadline,
    request_state: dict[str, Any],
) -> InferAnswer:
    """Answer one V2 infer call whose body is read; raises ``TandemError`` for every refusal.

    ``request_state`` is the request's state dict: the served version is written there for the request log and
    metrics.
    """
    settings = state.settings
    parsed = parse_infer_request(body, headers.header_length, max_elements=settings.max_tensor_elements)
    check_infer_limits(parsed, settings)
    reply = await traffic.infer(
        partial(state.prediction_cache.infer, state.pool),
        state.pool,
        InferRequest(request_id="", model=model, version=version, budget_ms=0.0, inputs=parsed.inputs),
        deadline,
        key=headers.user_id or parsed.id,
    )
    if not reply.ok:
        raise error_from_code(reply.status, reply.error)
    request_state["model_version"] = reply.version
    state.drift.observe(model, reply.version, parsed.inputs, reply.outputs)
    content, json_length = build_infer_response(
        model_name=model,
        model_version=reply.version,
        request_id=parsed.id,
        outputs=reply.outputs,
        requested=parsed.outputs,
        binary_output_default=parsed.binary_output_default,
    )
    return InferAnswer(content, JSON if json_length is None else BINARY, json_length)


def match_infer_path(path: str) -> tuple[str, str | None] | None:
    """(model, version) when ``path`` is a V2 infer path, else None (as Starlette's ``{param}`` would match)."""
    parts = path.split("/")
    if len(parts) == 5 and parts[:3] == ["", "v2", "models"] and parts[4] == "infer" and parts[3]:
        return parts[3], None
    if (
        len(parts) == 7
        and parts[:3] == ["", "v2", "models"]
        and parts[4] == "versions"
        and parts[6] == "infer"
        and parts[3]
        and parts[5]
    ):
        return parts[3], parts[5]
    return None


def _infer_headers(scope: Scope) -> InferHeaders:
    timeout = header_length = user_id = None
    for name, value in scope["headers"]:
        if name == _TIMEOUT:
            timeout = value.decode("latin-1")
        elif name == _HEADER_LENGTH:
            header_length = value.decode("latin-1")
        elif name == _USER_ID:
            user_id = value.decode("latin-1")
    return InferHeaders(timeout, header_length, user_id)


def _name_fastapi_span(scope: Scope, template: str) -> None:
    # FastAPI's own server span takes its route from its router, which this path skips: without this it is named
    # after the method alone. The hook is FastAPI's private one, so a FastAPI without it just skips the naming.
    if _route_selected is not None:
        _route_selected(scope=scope, path=template)


@dataclass(frozen=True, slots=True)
class RouteTemplate:
    """What the gateway's middlewares read from ``scope["route"]``: the route's template, for labels."""

    path: str


_ROUTES = {template: RouteTemplate(template) for template in (INFER_PATH, INFER_VERSION_PATH)}


class InferFastPath:
    """Serves V2 infer calls directly (see the module docstring); passes every other request on to ``app``."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        matched = match_infer_path(scope["path"]) if scope["type"] == "http" and scope["method"] == "POST" else None
        if matched is None:
            await self.app(scope, receive, send)
            return
        model, version = matched
        template = INFER_PATH if version is None else INFER_VERSION_PATH
        scope["route"] = _ROUTES[template]
        _name_fastapi_span(scope, template)
        scope["path_params"] = {"model": model} if version is None else {"model": model, "version": version}
        app = scope["app"]
        state: GatewayState = app.state.tandem
        try:
            headers = _infer_headers(scope)
            deadline = deadline_for(state, headers)
            state.pool.check_served(model, version)
            body = await receive_body(scope, receive, state.settings.max_body_bytes)
            answer = await run_infer(
                state, app.state.traffic, model, version, body, headers, deadline, scope.setdefault("state", {})
            )
        except ClientDisconnect:  # nobody is left to answer
            return
        except Exception as exc:  # every error gets its answer; error_parts tells them apart
            status, message, extra = error_parts(exc, scope["method"], scope["path"])
            await send_json_error(send, status, message, [(k.lower().encode(), v.encode()) for k, v in extra.items()])
            return
        start = [(b"content-type", answer.media_type.encode()), (b"content-length", str(len(answer.content)).encode())]
        if answer.json_length is not None:
            start.append((_HEADER_LENGTH, str(answer.json_length).encode()))
        await send({"type": "http.response.start", "status": 200, "headers": start})
        await send({"type": "http.response.body", "body": answer.content})
