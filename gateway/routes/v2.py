"""The KServe V2 / Open Inference Protocol REST surface.

Tensors never pass through pydantic: bodies are parsed by ``v2_codec`` straight into wire tensors, and binary
tensor bytes go from the HTTP body into ZeroMQ frames (and back) without becoming Python lists.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial
from typing import Any

import orjson
from fastapi import APIRouter, FastAPI, Request
from starlette.responses import Response

from tandem import __version__
from tandem.common.errors import ModelUnavailable, error_from_code
from tandem.common.wire import InferRequest
from tandem.gateway.body import read_body
from tandem.gateway.deadlines import TIMEOUT_HEADER, deadline_from_header
from tandem.gateway.limits import check_infer_limits
from tandem.gateway.state import gateway_state
from tandem.gateway.traffic import USER_ID_HEADER, Traffic
from tandem.gateway.v2_codec import (
    HEADER_LENGTH_HEADER,
    build_infer_response,
    model_metadata_body,
    parse_infer_request,
)
from tandem.gateway.v2_schema import INFER_OPENAPI


@asynccontextmanager
async def _lifespan(app: FastAPI) -> AsyncIterator[None]:
    """Open the traffic policy (``gateway/traffic.py``) as ``app.state.traffic``; every route's calls use it."""
    app.state.traffic = Traffic.from_settings(app.state.tandem.settings)
    try:
        yield
    finally:
        await app.state.traffic.close()


router = APIRouter(tags=["v2"], lifespan=_lifespan)

SERVER_NAME = "tandem"
EXTENSIONS = ("binary_tensor_data",)
PREFERRED_ALIAS = "champion"
JSON = "application/json"
BINARY = "application/octet-stream"


def _json(content: Any, status_code: int = 200) -> Response:
    return Response(orjson.dumps(content), status_code=status_code, media_type=JSON)


@router.get("/v2/health/live")
async def live() -> Response:
    """200 while the process serves HTTP."""
    return _json({"live": True})


@router.get("/v2/health/ready")
async def ready(request: Request) -> Response:
    """200 when some worker is live with its models loaded."""
    if not gateway_state(request).pool.ready:
        raise ModelUnavailable("no worker is ready")
    return _json({"ready": True})


@router.get("/v2")
async def server_metadata() -> Response:
    """Server name, version and supported protocol extensions."""
    return _json({"name": SERVER_NAME, "version": __version__, "extensions": list(EXTENSIONS)})


def _model_entry(request: Request, model: str, version: str | None) -> tuple[dict[str, Any], list[str]]:
    pool = gateway_state(request).pool
    pool.check_served(model, version)
    versions = pool.models()[model]
    if version is not None:
        return versions[version], sorted(versions)
    preferred = [m for m in versions.values() if PREFERRED_ALIAS in m.get("aliases", ())]
    chosen = preferred[0] if preferred else versions[max(versions, key=_version_key)]
    return chosen, sorted(versions, key=_version_key)


def _version_key(version: str) -> tuple[int, str]:
    return (int(version), "") if version.isdigit() else (-1, version)


@router.get("/v2/models/{model}")
@router.get("/v2/models/{model}/versions/{version}")
async def model_metadata(request: Request, model: str, version: str | None = None) -> Response:
    """Inputs and outputs of a served model (variable dimensions are -1)."""
    entry, versions = _model_entry(request, model, version)
    body = model_metadata_body(
        model, versions, entry.get("platform", "pytorch"), entry.get("inputs", []), entry.get("outputs", [])
    )
    return Response(body, media_type=JSON)


@router.get("/v2/models/{model}/ready")
@router.get("/v2/models/{model}/versions/{version}/ready")
async def model_ready(request: Request, model: str, version: str | None = None) -> Response:
    """200 when a ready worker serves the model (version)."""
    pool = gateway_state(request).pool
    pool.check_served(model, version)
    if pool.pick(model, version, set()) is None:
        raise ModelUnavailable(f"model {model!r} is not ready")
    return _json({"name": model, "ready": True})


@router.post("/v2/models/{model}/infer", openapi_extra=INFER_OPENAPI)
@router.post("/v2/models/{model}/versions/{version}/infer", openapi_extra=INFER_OPENAPI)
async def infer(request: Request, model: str, version: str | None = None) -> Response:
    """Run the model on the request's tensors (JSON or the binary tensor extension)."""
    state = gateway_state(request)
    settings = state.settings
    deadline = deadline_from_header(
        request.headers.get(TIMEOUT_HEADER),
        default_ms=settings.request_timeout_ms,
        max_ms=settings.max_request_timeout_ms,
    )
    state.pool.check_served(model, version)
    body = await read_body(request, settings.max_body_bytes)
    parsed = parse_infer_request(
        body, request.headers.get(HEADER_LENGTH_HEADER), max_elements=settings.max_tensor_elements
    )
    check_infer_limits(parsed, settings)
    reply = await request.app.state.traffic.infer(
        partial(state.prediction_cache.infer, state.pool),
        state.pool,
        InferRequest(request_id="", model=model, version=version, budget_ms=0.0, inputs=parsed.inputs),
        deadline,
        key=request.headers.get(USER_ID_HEADER) or parsed.id,
    )
    if not reply.ok:
        raise error_from_code(reply.status, reply.error)
    request.state.model_version = reply.version
    state.drift.observe(model, reply.version, parsed.inputs, reply.outputs)
    content, json_length = build_infer_response(
        model_name=model,
        model_version=reply.version,
        request_id=parsed.id,
        outputs=reply.outputs,
        requested=parsed.outputs,
        binary_output_default=parsed.binary_output_default,
    )
    if json_length is None:
        return Response(content, media_type=JSON)
    return Response(content, media_type=BINARY, headers={HEADER_LENGTH_HEADER: str(json_length)})
