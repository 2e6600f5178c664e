"""The gateway's app factory: routes, error handlers, and the resources opened in the lifespan.

Nothing opens at import time: the lifespan connects to the workers and loads the feature store, and closes
them again on shutdown.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager

from fastapi import FastAPI

from tandem import __version__
from tandem.common.settings import GatewaySettings
from tandem.gateway.feature_store import FeatureStore, InMemoryFeatureStore
from tandem.gateway.http_errors import install_error_handlers
from tandem.gateway.routes import recommendations, v2
from tandem.gateway.state import GatewayState
from tandem.gateway.worker_client import WorkerPool


def create_app(settings: GatewaySettings, *, features: FeatureStore | None = None) -> FastAPI:
    """A gateway app serving the V2 protocol and the product endpoints, for ``settings``."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with AsyncExitStack() as stack:
            pool = WorkerPool(
                settings.worker_endpoints(),
                ping_interval_s=settings.ping_interval_s,
                silence_s=settings.worker_silence_s,
            )
            await pool.start()
            stack.push_async_callback(pool.close)
            store = features if features is not None else InMemoryFeatureStore.from_home(settings.home)
            app.state.tandem = GatewayState(settings=settings, pool=pool, features=store)
            yield

    app = FastAPI(title="Tandem gateway", version=__version__, lifespan=lifespan)
    install_error_handlers(app)
    app.include_router(v2.router)
    app.include_router(recommendations.router)
    return app
