"""The gateway's app factory: routes, error handlers, and the resources opened in the lifespan.

Nothing opens at import time: the lifespan connects to the workers and loads the feature store, and closes
them again on shutdown.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

from fastapi import FastAPI

from tandem import __version__
from tandem.common.curve import CurveClientConfig
from tandem.common.gc_pauses import freeze_startup_objects
from tandem.common.privacy import IdHasher
from tandem.common.settings import GatewaySettings
from tandem.gateway.admission import ADMISSION_STATE_KEY, Admission, AdmissionMiddleware
from tandem.gateway.auth import AuthMiddleware, AuthPolicy
from tandem.gateway.discovery import RedisDiscovery
from tandem.gateway.drift import DriftMonitor, pool_references
from tandem.gateway.feature_store import FeatureStore, open_feature_store
from tandem.gateway.hedging import HedgePolicy, parse_models
from tandem.gateway.http_errors import install_error_handlers
from tandem.gateway.limits import BodyLimitMiddleware
from tandem.gateway.loop_lag import LoopLag
from tandem.gateway.metrics import MetricsMiddleware
from tandem.gateway.metrics import router as metrics_router
from tandem.gateway.prediction_cache import PredictionCache
from tandem.gateway.request_log import RequestLogMiddleware
from tandem.gateway.routes import recommendations, v2
from tandem.gateway.saturation import Saturation
from tandem.gateway.state import GatewayState
from tandem.gateway.tracing import TracingMiddleware, fastapi_telemetry_off
from tandem.gateway.v2_infer import InferFastPath
from tandem.gateway.worker_client import WorkerPool

STATIC_DISCOVERY = "static"
REDIS_DISCOVERY = "redis"


def hedge_policy(settings: GatewaySettings) -> HedgePolicy | None:
    """The hedging policy the settings ask for; None when no model is hedged."""
    models = parse_models(settings.hedge_models)
    if models is not None and not models:
        return None
    return HedgePolicy(
        models=models,
        fixed_delay_s=settings.hedge_delay_ms / 1000 if settings.hedge_delay_ms else None,
        quantile=settings.hedge_quantile,
        budget_ratio=settings.hedge_budget_ratio,
    )


async def start_discovery(settings: GatewaySettings, pool: WorkerPool, stack: AsyncExitStack) -> None:
    """Follow the Redis worker registry for as long as the app runs."""
    if not settings.redis_url:
        raise ValueError("TANDEM_DISCOVERY=redis needs TANDEM_REDIS_URL")
    discovery = RedisDiscovery(settings.redis_url, pool, settings.discovery_interval_s)
    task = asyncio.create_task(discovery.run(), name="worker discovery")

    async def stop() -> None:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await discovery.close()

    stack.push_async_callback(stop)


def _served_models(app: FastAPI) -> dict[str, dict[str, dict[str, Any]]]:
    """What the app's workers serve, once its lifespan has started them (nothing before)."""
    state: GatewayState | None = getattr(app.state, "tandem", None)
    return state.pool.models() if state is not None else {}


def create_app(settings: GatewaySettings, *, features: FeatureStore | None = None) -> FastAPI:
    """A gateway app serving the V2 protocol and the product endpoints, for ``settings``."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[dict[str, Admission]]:
        async with AsyncExitStack() as stack:
            pool = WorkerPool(
                settings.worker_endpoints() if settings.discovery == STATIC_DISCOVERY else [],
                ping_interval_s=settings.ping_interval_s,
                silence_s=settings.worker_silence_s,
                hedging=hedge_policy(settings),
                hedge_max_queued_rows=settings.hedge_max_queued_rows,
                curve=CurveClientConfig.from_settings(settings),
                # A reply waits out the loop's lag before it is read: workers are sent the budget left after it.
                reply_delay_s=None if admission.lag is None else (lambda: admission.lag.sustained_s),
            )
            await pool.start()
            stack.push_async_callback(pool.close)
            if settings.discovery == REDIS_DISCOVERY:
                await start_discovery(settings, pool, stack)
            store = features if features is not None else await open_feature_store(settings, stack)
            app.state.tandem = GatewayState(
                settings=settings,
                pool=pool,
                features=store,
                prediction_cache=PredictionCache.from_settings(settings),
                drift=DriftMonitor.from_settings(settings, pool_references(pool)),
            )
            if admission.lag is not None:
                admission.lag.start()
                stack.callback(admission.lag.stop)
            freeze_startup_objects()  # see common/gc_pauses.py
            yield {ADMISSION_STATE_KEY: admission}  # uvicorn hands it to the HTTP protocol

    app = FastAPI(title="Tandem gateway", version=__version__, lifespan=lifespan, **fastapi_telemetry_off())
    admission = Admission(
        settings.max_inflight,
        lag=LoopLag() if settings.shed_lag_share > 0 else None,
        saturation=Saturation() if settings.shed_lag_share > 0 else None,
        lag_share=settings.shed_lag_share,
        lag_floor_s=settings.shed_lag_floor_ms / 1000,
        default_budget_ms=settings.request_timeout_ms,
        max_budget_ms=settings.max_request_timeout_ms,
    )
    app.state.admission = admission
    if settings.infer_fast_path:
        app.add_middleware(InferFastPath)  # innermost: every middleware below applies to the calls it serves
    app.add_middleware(AdmissionMiddleware, admission=admission)
    app.add_middleware(BodyLimitMiddleware, max_body_bytes=settings.max_body_bytes)
    app.add_middleware(AuthMiddleware, policy=AuthPolicy.from_settings(settings))  # checked first
    app.add_middleware(MetricsMiddleware, served=lambda: _served_models(app))  # counts every answer, refusals too
    app.state.id_hasher = IdHasher.from_settings(settings)  # routes hash user ids for the request log with it
    app.add_middleware(RequestLogMiddleware, hasher=app.state.id_hasher)  # one JSON line per request, refusals too
    app.add_middleware(TracingMiddleware)
    install_error_handlers(app)
    app.include_router(v2.router)
    app.include_router(recommendations.router)
    app.include_router(metrics_router)
    return app
