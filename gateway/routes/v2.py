"""The KServe V2 / Open Inference Protocol REST surface.

Tensors never pass through pydantic: bodies are parsed by ``v2_codec`` straight into wire tensors, and binary
tensor bytes go from the HTTP body into ZeroMQ frames (and back) without becoming Python lists.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import orjson
from fastapi import APIRouter, FastAPI, Request
from starlette.responses import Response

from tandem import __version__
from tandem.common.errors import ModelUnavailable
from tandem.gateway.body import read_body
from tandem.gateway.deadlines import TIMEOUT_HEADER
from tandem.gateway.state import gateway_state
from tandem.gateway.traffic import USER_ID_HEADER, Traffic
from tandem.gateway.v2_codec import HEADER_LENGTH_HEADER, model_metadata_body
from tandem.gateway.v2_infer import INFER_PATH, INFER_VERSION_PATH, JSON, InferHeaders, deadline_for, run_infer
from tandem.gateway.v2_schema import INFER_OPENAPI
from tandem.gateway.worker_client import version_order


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
    named = pool.check_served(model, version)
    versions = pool.models()[model]
    ordered = sorted(versions, key=version_order)
    if named is not None:
        return versions[named], ordered
    preferred = [m for m in versions.values() if PREFERRED_ALIAS in m.get("aliases", ())]
    return (preferred[0] if preferred else versions[ordered[-1]]), ordered


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


@router.post(INFER_PATH, openapi_extra=INFER_OPENAPI)
@router.post(INFER_VERSION_PATH, openapi_extra=INFER_OPENAPI)
async def infer(request: Request, model: str, version: str | None = None) -> Response:
    """Run the model on the request's tensors (JSON or the binary tensor extension).

    Served by ``v2_infer.InferFastPath`` unless ``TANDEM_INFER_FAST_PATH`` is off; both run ``run_infer``.
    """
    state = gateway_state(request)
    headers = InferHeaders(
        request.headers.get(TIMEOUT_HEADER),
        request.headers.get(HEADER_LENGTH_HEADER),
        request.headers.get(USER_ID_HEADER),
    )
    deadline = deadline_for(state, headers)
    state.pool.check_served(model, version)
    body = await read_body(request, state.settings.max_body_bytes)
    answer = await run_infer(
        state, request.app.state.traffic, model, version, body, headers, deadline, request.scope.setdefault("state", {})
    )
    extra = {} if answer.json_length is None else {HEADER_LENGTH_HEADER: str(answer.json_length)}
    return Response(answer.content, media_type=answer.media_type, headers=extra)
