"""``POST /v1/recommendations``: the yarn store's product endpoint.

Fetch the user's and the candidates' raw features in one lookup, build the model's input rows with the one
shared feature definition, score them on a worker (or from the prediction cache), then run the model's
post-processing pipeline (``tandem.gateway.postprocess``) and return the top ``k``. Candidate ids are
de-duplicated, first occurrence kept; with none given, the whole catalog is ranked.

The answer::

    {"items": [{"product_id": "p0117", "score": 0.41}, ...],
     "model": {"name": "ranker", "version": "3"},
     "request_id": "...",
     "degraded": false}

``degraded`` is true when some part of the answer rests on defaults; ``defaulted`` (present only then) says
which part:

- ``"user": true``: the user is unknown and was scored as ``DEFAULT_USER`` (a new customer).
- ``"products": ["p9999", ...]``: candidates unknown to the store, scored as ``DEFAULT_PRODUCT``, which is out of
  stock, so the ``sellable`` step drops them.
- ``"features": "timeout" | "error" | "unavailable"``: the feature store could not answer (too slow, failing,
  or skipped while its circuit breaker is open). Then nothing is known of anyone: no model is called, the
  items are the first ``k`` candidates in the order given, each with the configured ``fallback_score``
  (``"scores": "fallback"``), no post-processing step runs (none has a record to judge) and
  ``model.version`` is null. Scoring everything with default features instead would rank identical rows and
  then drop every one as out of stock: an empty answer.
- ``"catalog": true``: the request named no candidates and no catalog is loaded; ``items`` is empty.

So a feature-store failure never turns into a 5xx: the lookup spends at most ``feature_timeout_ms`` and never
more than what is left of the request's deadline, and its fallback needs no worker. Worker failures still map
to their errors (503, 504) as on every route.

Resources: the router's lifespan (run by the app's, after it) builds the post-processing pipelines and the
prediction cache from the settings, so an unknown step name fails the start, not a request.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from functools import partial
from typing import Any

import orjson
from fastapi import APIRouter, FastAPI, Request
from pydantic import BaseModel, ConfigDict, Field
from starlette.responses import Response

from tandem.common.errors import BadRequest, InternalError, error_from_code
from tandem.common.features import build_rows, default_product, default_user
from tandem.common.settings import GatewaySettings
from tandem.common.tracing import tracer
from tandem.common.wire import InferRequest, Tensor
from tandem.gateway import metrics
from tandem.gateway.deadlines import TIMEOUT_HEADER, Deadline, deadline_from_header
from tandem.gateway.feature_store import FeatureLookup
from tandem.gateway.postprocess import Candidate, Pipelines, StepContext
from tandem.gateway.prediction_cache import PredictionCache
from tandem.gateway.state import GatewayState, gateway_state
from tandem.gateway.traffic import Traffic

FEATURES_INPUT = "features"
MAX_ID_LENGTH = 128
MAX_K = 1000
_MS_PER_S = 1000.0


@dataclass(frozen=True, slots=True)
class Recommender:
    """What this route holds while the app serves: the post-processing pipelines and the prediction cache."""

    pipelines: Pipelines
    cache: PredictionCache


@asynccontextmanager
async def _lifespan(app: FastAPI) -> AsyncIterator[None]:
    state: GatewayState = app.state.tandem
    settings = state.settings
    # A gateway-wide cache, when the app's lifespan opens one, is shared so V2 calls and this route hit alike.
    cache = getattr(state, "prediction_cache", None) or PredictionCache.from_settings(settings)
    app.state.recommender = Recommender(Pipelines.parse(settings.postprocess_steps), cache)
    yield


_TRACER = tracer("tandem.gateway")
router = APIRouter(tags=["products"], lifespan=_lifespan)


class RecommendationRequest(BaseModel):
    """Who to recommend for, among which products, and how many."""

    # A misspelt field (``limit`` for ``k``) is a 400 naming it, not a default silently applied.
    model_config = ConfigDict(extra="forbid")

    user_id: str = Field(min_length=1, max_length=MAX_ID_LENGTH)
    candidates: list[str] | None = Field(default=None, description="Product ids; the whole catalog when absent.")
    k: int = Field(default=10, ge=1, le=MAX_K)


@router.post("/v1/recommendations")
async def recommend(request: Request, body: RecommendationRequest) -> Response:
    """Rank candidate products for a user by predicted purchase likelihood."""
    state = gateway_state(request)
    settings = state.settings
    request.state.user_hash = request.app.state.id_hasher.hash_id(body.user_id)  # for the request log
    deadline = deadline_from_header(
        request.headers.get(TIMEOUT_HEADER),
        default_ms=settings.request_timeout_ms,
        max_ms=settings.max_request_timeout_ms,
    )
    candidates = _candidates(body, state, settings)
    if not candidates:
        return _answer(request, [], {"name": settings.ranker_model, "version": None}, {"catalog": True})

    request.state.model = settings.ranker_model
    budget_s = min(settings.feature_timeout_ms / _MS_PER_S, deadline.remaining_s())
    started = time.perf_counter()
    with _TRACER.start_as_current_span("tandem.feature_lookup", attributes={"tandem.candidates": len(candidates)}):
        found = await state.features.lookup(body.user_id, candidates, timeout_s=budget_s)
    metrics.FEATURE_LOOKUP_DURATION.labels(type(state.features).__name__).observe(time.perf_counter() - started)
    _count_defaults(found)
    if found.failure is not None:
        items = [{"product_id": pid, "score": settings.fallback_score} for pid in candidates[: body.k]]
        defaulted = {"user": True, "features": found.failure, "scores": "fallback"}
        return _answer(request, items, {"name": settings.ranker_model, "version": None}, defaulted)

    deadline.check("scoring")
    recommender: Recommender = request.app.state.recommender
    user = found.user if found.user is not None else default_user(body.user_id)
    products = [
        rec if rec is not None else default_product(pid) for pid, rec in zip(candidates, found.products, strict=True)
    ]
    scores, model = await _score(
        state, recommender.cache, build_rows(user, products), deadline, request.app.state.traffic, body.user_id
    )
    scored = [
        Candidate(pid, score, record, known=rec is not None)
        for pid, score, record, rec in zip(candidates, scores, products, found.products, strict=True)
    ]
    context = StepContext(model=settings.ranker_model, k=body.k, user=user, max_per_category=settings.max_per_category)
    ranked = recommender.pipelines.for_model(settings.ranker_model).run(scored, context)
    items = [{"product_id": c.product_id, "score": c.score} for c in ranked]
    request.state.model_version = model["version"]
    return _answer(request, items, model, _defaulted(found))


def _candidates(body: RecommendationRequest, state: GatewayState, settings: GatewaySettings) -> list[str]:
    """The distinct candidate ids to rank, first occurrence first (empty: no catalog is loaded)."""
    if body.candidates is not None and not body.candidates:
        raise BadRequest("'candidates' is empty: name some products, or leave it out to rank the whole catalog")
    given = body.candidates if body.candidates is not None else state.features.catalog()
    candidates = list(dict.fromkeys(given))
    if len(candidates) > settings.max_candidates:
        raise BadRequest(f"{len(candidates)} candidates given; at most {settings.max_candidates} are allowed")
    if any(len(pid) > MAX_ID_LENGTH for pid in candidates):
        raise BadRequest(f"candidate ids must be at most {MAX_ID_LENGTH} characters")
    return candidates


async def _score(
    state: GatewayState, cache: PredictionCache, rows: Any, deadline: Deadline, traffic: Traffic, user_id: str
) -> tuple[list[float], dict[str, Any]]:
    """One score per row from the ranker (the alias the traffic split gives the user), and the model that gave them."""
    model = state.settings.ranker_model
    request = InferRequest(
        request_id="", model=model, version=None, budget_ms=0.0, inputs=[Tensor.from_numpy(FEATURES_INPUT, rows)]
    )
    reply = await traffic.infer(partial(cache.infer, state.pool), state.pool, request, deadline, key=user_id)
    if not reply.ok:
        raise error_from_code(reply.status, reply.error)
    scores = reply.outputs[0].to_numpy().reshape(-1)
    if scores.size != len(rows):
        raise InternalError(f"model returned {scores.size} scores for {len(rows)} candidates")
    state.drift.observe(model, reply.version, request.inputs, reply.outputs)
    return scores.tolist(), {"name": reply.model or model, "version": reply.version}


def _count_defaults(found: FeatureLookup) -> None:
    if found.failure is not None:
        metrics.FEATURE_FAILURES.labels(found.failure).inc()
        return
    if found.user is None:
        metrics.FEATURE_FAILURES.labels("unknown_user").inc()
    if found.missing_products:
        metrics.FEATURE_FAILURES.labels("unknown_product").inc(len(found.missing_products))


def _defaulted(found: FeatureLookup) -> dict[str, Any]:
    defaulted: dict[str, Any] = {}
    if found.user is None:
        defaulted["user"] = True
    if found.missing_products:
        defaulted["products"] = found.missing_products
    return defaulted


def _answer(request: Request, items: Sequence[dict[str, Any]], model: dict[str, Any], defaulted: dict) -> Response:
    payload: dict[str, Any] = {
        "items": items,
        "model": model,
        "request_id": request.headers.get("x-request-id") or uuid.uuid4().hex,
        "degraded": bool(defaulted),
    }
    if defaulted:
        payload["defaulted"] = defaulted
    return Response(orjson.dumps(payload), media_type="application/json")
