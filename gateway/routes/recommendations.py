"""``POST /v1/recommendations``: the yarn store's product endpoint.

Fetch the user's and candidates' raw features, build the model's input rows with the one shared feature
definition, score them on a worker, then apply the business post-processing and return the top ``k``.
"""

from __future__ import annotations

import uuid

import orjson
from fastapi import APIRouter, Request
from pydantic import BaseModel, Field
from starlette.responses import Response

from tandem.common.errors import BadRequest, InternalError, error_from_code
from tandem.common.features import build_rows, default_product, default_user
from tandem.common.wire import InferRequest, Tensor
from tandem.gateway.deadlines import TIMEOUT_HEADER, deadline_from_header
from tandem.gateway.postprocess import Candidate, top_k
from tandem.gateway.state import gateway_state

router = APIRouter(tags=["products"])

FEATURES_INPUT = "features"
MAX_ID_LENGTH = 128
MAX_K = 1000


class RecommendationRequest(BaseModel):
    """Who to recommend for, among which products, and how many."""

    user_id: str = Field(min_length=1, max_length=MAX_ID_LENGTH)
    candidates: list[str] | None = Field(default=None, description="Product ids; the whole catalog when absent.")
    k: int = Field(default=10, ge=1, le=MAX_K)


@router.post("/v1/recommendations")
async def recommend(request: Request, body: RecommendationRequest) -> Response:
    """Rank candidate products for a user by predicted purchase likelihood."""
    state = gateway_state(request)
    settings = state.settings
    deadline = deadline_from_header(
        request.headers.get(TIMEOUT_HEADER),
        default_ms=settings.request_timeout_ms,
        max_ms=settings.max_request_timeout_ms,
    )
    candidates = list(body.candidates) if body.candidates is not None else list(state.features.catalog())
    if not candidates:
        raise BadRequest("no candidates to rank: pass 'candidates' or load a catalog")
    if len(candidates) > settings.max_candidates:
        raise BadRequest(f"{len(candidates)} candidates given; at most {settings.max_candidates} are allowed")
    if any(len(pid) > MAX_ID_LENGTH for pid in candidates):
        raise BadRequest(f"candidate ids must be at most {MAX_ID_LENGTH} characters")

    found = await state.features.lookup(body.user_id, candidates)
    deadline.check("scoring")
    user = found.user if found.user is not None else default_user(body.user_id)
    products = [
        rec if rec is not None else default_product(pid) for pid, rec in zip(candidates, found.products, strict=True)
    ]
    rows = build_rows(user, products)

    reply = await state.pool.infer(
        InferRequest(
            request_id="",
            model=settings.ranker_model,
            version=None,
            budget_ms=0.0,
            inputs=[Tensor.from_numpy(FEATURES_INPUT, rows)],
        ),
        deadline,
    )
    if not reply.ok:
        raise error_from_code(reply.status, reply.error)
    scores = reply.outputs[0].to_numpy().reshape(-1)
    if scores.size != len(candidates):
        raise InternalError(f"model returned {scores.size} scores for {len(candidates)} candidates")
    scored = zip(candidates, scores.tolist(), products, strict=True)
    ranked = top_k([Candidate(pid, score, rec) for pid, score, rec in scored], body.k)
    degraded: dict[str, object] = {}
    if found.user is None:
        degraded["user"] = True
    if found.missing_products:
        degraded["products"] = found.missing_products
    payload = {
        "items": [{"product_id": c.product_id, "score": c.score} for c in ranked],
        "model": {"name": reply.model or settings.ranker_model, "version": reply.version},
        "request_id": request.headers.get("x-request-id") or uuid.uuid4().hex,
        "degraded": bool(degraded),
    }
    if degraded:
        payload["defaulted"] = degraded
    return Response(orjson.dumps(payload), media_type="application/json")
