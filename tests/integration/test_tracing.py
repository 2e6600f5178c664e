"""One trace across the ZeroMQ hop: the gateway's spans and the worker's, with an in-memory exporter.

Gateway app (under its lifespan) and worker server run in this process on one event loop, over real ZeroMQ
sockets, so a single in-memory exporter sees both sides.
"""

from __future__ import annotations

import asyncio

import httpx
import numpy as np
import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from tandem.common.settings import GatewaySettings, WorkerSettings
from tandem.gateway.app import create_app
from tandem.gateway.feature_store import InMemoryFeatureStore
from tandem.worker.server import WorkerServer
from tests.support.registry import TinyModel

EXPORTER = InMemorySpanExporter()


@pytest.fixture(scope="module", autouse=True)
def tracing() -> None:
    provider = trace.get_tracer_provider()
    if not isinstance(provider, TracerProvider):
        provider = TracerProvider()
        trace.set_tracer_provider(provider)
    provider.add_span_processor(SimpleSpanProcessor(EXPORTER))


async def _one_traced_request(tiny_model: TinyModel, tmp_path) -> httpx.Response:
    worker_settings = WorkerSettings(
        home=tmp_path, bind="tcp://127.0.0.1:0", registry_uri=tiny_model.registry.uri, models=tiny_model.ref,
        metrics_port=0, poll_interval_s=0,
    )  # fmt: skip
    worker = WorkerServer(worker_settings)
    await worker.start()
    try:
        await worker.load_models()
        settings = GatewaySettings(home=tmp_path, workers=worker.endpoint, ping_interval_s=0.05)
        app = create_app(settings, features=InMemoryFeatureStore([], []))
        async with app.router.lifespan_context(app):
            await app.state.tandem.pool.wait_ready(10)
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://gateway") as client:
                x = np.ones((3, 4), np.float32)
                body = {"inputs": [{"name": "x", "shape": [3, 4], "datatype": "FP32", "data": x.ravel().tolist()}]}
                return await client.post(f"/v2/models/{tiny_model.name}/infer", json=body)
    finally:
        await worker.close()


def test_one_trace_holds_the_gateway_and_worker_spans(tiny_model: TinyModel, tmp_path) -> None:
    EXPORTER.clear()
    answer = asyncio.run(_one_traced_request(tiny_model, tmp_path))
    assert answer.status_code == 200, answer.text
    finished = EXPORTER.get_finished_spans()
    spans = {span.name: span for span in finished}
    by_id = {span.context.span_id: span for span in finished}
    # One server span, the gateway's own: FastAPI's native telemetry (newer releases) would add a second.
    (server,) = [span for span in finished if span.kind is SpanKind.SERVER]
    assert server.parent is None
    assert server.instrumentation_scope.name == "tandem.gateway"
    call = spans["tandem.worker_call"]
    wait = spans["tandem.worker.queue_wait"]
    batch = spans["tandem.worker.batch"]
    trace_id = server.context.trace_id
    assert {call.context.trace_id, wait.context.trace_id, batch.context.trace_id} == {trace_id}
    ancestors = []
    span = call
    while span.parent is not None:
        span = by_id[span.parent.span_id]
        ancestors.append(span)
    assert ancestors[-1] is server
    assert wait.parent.span_id == call.context.span_id  # across the ZeroMQ hop
    assert [link.context.span_id for link in batch.links] == [wait.context.span_id]
    assert call.attributes["tandem.hedge"] is False
    assert batch.attributes["tandem.batch.rows"] == 3
    assert server.name == "POST /v2/models/{model}/infer"
    assert server.attributes["http.response.status_code"] == 200
