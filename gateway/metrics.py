"""The gateway's Prometheus metrics, the middleware that times every request, and the ``/metrics`` endpoint.

Metrics are process-wide by nature (prometheus-client's multiprocess mode keeps one file per process and has no
notion of an app), so they are module-level objects: the one deliberate global in the gateway. With several
gateway processes on one port, ``PROMETHEUS_MULTIPROC_DIR`` is set before they start and ``/metrics`` sums
every process's files, so whichever process answers a scrape reports the whole gateway.

Buckets are for millisecond latencies. Names follow Prometheus conventions: ``tandem_`` prefix, base units,
``_total`` for counters.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping
from typing import Any

from fastapi import APIRouter
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from tandem.common.metric_children import child

LATENCY_BUCKETS_S = (
    0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.03, 0.05, 0.075,
    0.1, 0.15, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
)  # fmt: skip
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
UNMATCHED_ROUTE = "unmatched"

REQUESTS = Counter(
    "tandem_requests_total", "HTTP requests answered, by route, model, version and status.",
    ["route", "model", "version", "status"],
)  # fmt: skip
REQUEST_DURATION = Histogram(
    "tandem_request_duration_seconds", "Time from request to response, by route, model and status.",
    ["route", "model", "status"], buckets=LATENCY_BUCKETS_S,
)  # fmt: skip
INFLIGHT = Gauge("tandem_gateway_inflight", "Requests this gateway is working on.", multiprocess_mode="livesum")
SHED = Counter("tandem_shed_total", "Requests refused at once instead of queued, by reason.", ["reason"])
HEDGES = Counter(
    "tandem_hedges_total",
    "Second copies of slow requests sent to another worker; trigger stall (the first worker answered nothing"
    " for a hedge delay) or delay (the request alone was slow).",
    ["model", "trigger"],
)
HEDGES_WON = Counter("tandem_hedges_won_total", "Hedges that answered first.", ["model", "trigger"])
HEDGES_SKIPPED = Counter(
    "tandem_hedges_skipped_total",
    "Slow requests not hedged when checked: reason budget (spent), no_idle_worker or not_paying (hedges kept losing).",
    ["model", "reason"],
)
RETRIES = Counter("tandem_retries_total", "Attempts resent to another worker (lost or overloaded).", ["model"])
WORKER_CALL_DURATION = Histogram(
    "tandem_worker_call_duration_seconds", "Time from first send to first good answer from a worker.",
    ["model"], buckets=LATENCY_BUCKETS_S,
)  # fmt: skip
WORKERS_LIVE = Gauge("tandem_workers_live", "Workers answering pings.", multiprocess_mode="max")
CACHE = Counter("tandem_cache_total", "Prediction cache lookups, by result (hit, miss).", ["model", "result"])
FEATURE_LOOKUP_DURATION = Histogram(
    "tandem_feature_lookup_seconds", "Time of one feature lookup (user and all candidates).",
    ["store"], buckets=LATENCY_BUCKETS_S,
)  # fmt: skip
FEATURE_FAILURES = Counter(
    "tandem_feature_failures_total", "Feature lookups that failed or were defaulted, by kind.", ["kind"]
)
FEATURE_DRIFT_PSI = Gauge(
    "tandem_feature_drift_psi",
    "PSI of live inputs against the version's training reference, by column; feature __score__: its output.",
    ["model", "version", "feature"], multiprocess_mode="livemostrecent",
)  # fmt: skip


UNKNOWN_LABEL = "unknown"
ServedModels = Callable[[], Mapping[str, Mapping[str, Mapping[str, Any]]]]
"""Model name -> version -> metadata (with ``aliases``) that live workers serve: ``WorkerPool.models``."""


class ModelLabels:
    """The model and version labels of a request: names a worker served, never whatever a caller put in a path.

    A path's ``{model}`` and ``{version}`` are the caller's: labelled as they came, every made-up name would be
    a new time series in this process and in Prometheus. A name is labelled when a worker answered the request
    for it, or when workers serve it now or did earlier in this process (so a model keeps its label while its
    workers are down); any other is ``unknown``. The names kept grow only with what workers serve.
    """

    def __init__(self, served: ServedModels | None = None) -> None:
        self._served = served
        self._known: set[tuple[str, str]] = set()
        """(model, "") for each model seen served, (model, version) for each version or alias."""

    def labels(self, model: str, version: str, *, answered: bool) -> tuple[str, str]:
        """(model, version) as labels; ``answered``: a worker's reply (or a route) vouched for both."""
        if not model:
            return "", version
        if answered:
            if (model, version) not in self._known:
                self._known.update(((model, ""), (model, version)))
            return model, version
        if (model, "") not in self._known and not self._learn(model):
            return UNKNOWN_LABEL, UNKNOWN_LABEL if version else ""
        if version and (model, version) not in self._known and not self._learn(model, version):
            return model, UNKNOWN_LABEL
        return model, version

    def _learn(self, model: str, version: str = "") -> bool:
        """Whether live workers serve ``model`` (at ``version``, a version or an alias), remembered if so."""
        versions = self._served().get(model) if self._served is not None else None
        if versions is None:
            return False
        self._known.add((model, ""))
        if not version:
            return True
        if version in versions or any(version in entry.get("aliases", ()) for entry in versions.values()):
            self._known.add((model, version))
            return True
        return False


def _route_labels(scope: Scope, models: ModelLabels) -> tuple[str, str, str]:
    route = scope.get("route")
    path = getattr(route, "path", UNMATCHED_ROUTE) if route is not None else UNMATCHED_ROUTE
    params = scope.get("path_params") or {}
    state = scope.get("state") or {}
    answered_version = state.get("model_version")
    # A route's own model (``state["model"]``, from settings) and a version a worker answered with are the
    # gateway's; a path's are the caller's.
    path_model = params.get("model")
    model = path_model or state.get("model", "")
    version = answered_version or params.get("version") or ""
    model, version = models.labels(model, version, answered=not path_model or answered_version is not None)
    return path, model, version


class MetricsMiddleware:
    """Counts and times every HTTP request by its route template (not its raw path: bounded cardinality)."""

    def __init__(self, app: ASGIApp, served: ServedModels | None = None) -> None:
        self.app = app
        self.models = ModelLabels(served)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def send_and_remember(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        INFLIGHT.inc()
        try:
            await self.app(scope, receive, send_and_remember)
        finally:
            INFLIGHT.dec()
            # Label sets bounded by route templates, ``ModelLabels`` and status codes: looked up once each.
            route, model, version = _route_labels(scope, self.models)
            code = str(status)
            child(REQUESTS, route, model, version, code).inc()
            child(REQUEST_DURATION, route, model, code).observe(time.perf_counter() - started)


router = APIRouter(tags=["observability"])


@router.get("/metrics", include_in_schema=False)
async def metrics() -> Response:
    """Prometheus exposition of this gateway (all its processes in multiprocess mode)."""
    if os.environ.get(MULTIPROC_ENV):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)
