"""Running the gateway under uvicorn (``tandem gateway``)."""

from __future__ import annotations

import logging
import os
import tempfile

import uvicorn
from fastapi import FastAPI

from tandem.common.settings import GatewaySettings
from tandem.gateway.app import create_app
from tandem.gateway.http_protocol import BoundedHttpToolsProtocol
from tandem.gateway.metrics import MULTIPROC_ENV


def app_from_environment() -> FastAPI:
    """App factory for uvicorn's multi-process mode, where each process reads ``TANDEM_*`` itself."""
    return create_app(GatewaySettings())


def run(settings: GatewaySettings) -> None:
    """Serve until SIGINT/SIGTERM; several processes share the port when ``settings.processes`` > 1."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    common = {"host": settings.host, "port": settings.port, "access_log": False, "log_level": "warning"}
    # Bound the request line and headers under either parser: past max_header_bytes, 431 (gateway/http_protocol.py).
    common |= {"http": BoundedHttpToolsProtocol, "h11_max_incomplete_event_size": settings.max_header_bytes}
    if settings.processes > 1:
        # Each process writes its metrics to files here; /metrics, answered by any process, sums them all.
        os.environ.setdefault(MULTIPROC_ENV, tempfile.mkdtemp(prefix="tandem-metrics-"))
        # Child processes rebuild the settings from the environment, which the CLI has filled.
        uvicorn.run("tandem.gateway.server:app_from_environment", factory=True, workers=settings.processes, **common)
    else:
        uvicorn.run(create_app(settings), **common)
