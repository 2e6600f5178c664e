"""Running the gateway under uvicorn (``tandem gateway``)."""

from __future__ import annotations

import os
import tempfile

import uvicorn
from fastapi import FastAPI

from tandem.common.logs import configure_logging
from tandem.common.settings import GatewaySettings
from tandem.common.tracing import setup_tracing
from tandem.gateway.app import create_app
from tandem.gateway.http_protocol import BoundedHttpToolsProtocol
from tandem.gateway.io_first_loop import LOOP_FACTORY
from tandem.gateway.metrics import MULTIPROC_ENV


def app_from_environment() -> FastAPI:
    """App factory for uvicorn's multi-process mode, where each process reads ``TANDEM_*`` itself."""
    settings = GatewaySettings()
    configure_logging(json=settings.log_format == "json")  # a fresh process: uvicorn spawned it
    setup_tracing("tandem-gateway", settings.trace_exporter, settings.otlp_endpoint, settings.trace_sample_ratio)
    return create_app(settings)


def run(settings: GatewaySettings) -> None:
    """Serve until SIGINT/SIGTERM; several processes share the port when ``settings.processes`` > 1."""
    configure_logging(json=settings.log_format == "json")
    # log_config None: uvicorn's own loggers go through the root handler too, in the same format.
    common = {"host": settings.host, "port": settings.port, "access_log": False, "log_level": "warning"}
    common |= {"loop": LOOP_FACTORY if settings.event_loop == "io-first" else settings.event_loop}
    common |= {"log_config": None}
    # Bound the request line and headers under either parser: past max_header_bytes, 431 (gateway/http_protocol.py).
    common |= {"http": BoundedHttpToolsProtocol, "h11_max_incomplete_event_size": settings.max_header_bytes}
    if settings.processes > 1:
        # Each process writes its metrics to files here; /metrics, answered by any process, sums them all.
        os.environ.setdefault(MULTIPROC_ENV, tempfile.mkdtemp(prefix="tandem-metrics-"))
        # Child processes rebuild the settings from the environment, which the CLI has filled.
        uvicorn.run("tandem.gateway.server:app_from_environment", factory=True, workers=settings.processes, **common)
    else:
        setup_tracing("tandem-gateway", settings.trace_exporter, settings.otlp_endpoint, settings.trace_sample_ratio)
        uvicorn.run(create_app(settings), **common)
