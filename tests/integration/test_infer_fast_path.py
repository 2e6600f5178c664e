"""The lean V2 infer path answers exactly as the FastAPI route does, for good calls and for every refusal.

One real worker; two gateway apps in this process over real ZeroMQ sockets, one with the fast path
(``TANDEM_INFER_FAST_PATH``, the default) and one without it, each asked the same calls.
"""

from __future__ import annotations

import asyncio
import struct
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import orjson

from tandem.common.settings import GatewaySettings, WorkerSettings
from tandem.gateway.app import create_app
from tandem.gateway.feature_store import InMemoryFeatureStore
from tandem.gateway.v2_infer import match_infer_path
from tandem.worker.server import WorkerServer
from tests.support.registry import TinyModel

Call = tuple[str, bytes, dict[str, str]]


def _calls(model: str) -> list[Call]:
    x = np.arange(12, dtype=np.float32).reshape(3, 4)
    good = orjson.dumps(
        {"id": "a", "inputs": [{"name": "x", "shape": [3, 4], "datatype": "FP32", "data": x.ravel().tolist()}]}
    )
    header = orjson.dumps(
        {"inputs": [{"name": "x", "shape": [3, 4], "datatype": "FP32", "parameters": {"binary_data_size": 48}}],
         "outputs": [{"name": "y", "parameters": {"binary_data": True}}]}
    )  # fmt: skip
    binary = header + x.tobytes()
    json_type = {"content-type": "application/json"}
    return [
        (f"/v2/models/{model}/infer", good, json_type),
        (f"/v2/models/{model}/versions/1/infer", good, json_type),
        (f"/v2/models/{model}/versions/champion/infer", good, json_type),  # an alias names its version
        (f"/v2/models/{model}/infer", binary, {"inference-header-content-length": str(len(header))}),
        (f"/v2/models/{model}/infer", good, {**json_type, "x-request-timeout-ms": "5000", "x-user-id": "u1"}),
        (f"/v2/models/{model}/infer", b"{not json", json_type),
        (f"/v2/models/{model}/infer", b"", json_type),
        (f"/v2/models/{model}/infer", binary, {"inference-header-content-length": "9999"}),
        (f"/v2/models/{model}/infer", good, {**json_type, "x-request-timeout-ms": "soon"}),
        (f"/v2/models/{model}/infer", b"x" * 5000, json_type),  # past the body limit
        ("/v2/models/nope/infer", good, json_type),
        (f"/v2/models/{model}/versions/99/infer", good, json_type),
        (f"/v2/models/{model}/infer", struct.pack("<I", 7), json_type),
    ]


async def _answers(settings: GatewaySettings, calls: list[Call]) -> list[tuple[int, Any, str | None]]:
    app = create_app(settings, features=InMemoryFeatureStore([], []))
    async with app.router.lifespan_context(app):
        assert await app.state.tandem.pool.wait_ready(10)
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://gateway") as client:
            answers = []
            for path, body, headers in calls:
                response = await client.post(path, content=body, headers=headers)
                length = response.headers.get("inference-header-content-length")
                content: Any = response.content if length else orjson.loads(response.content)
                answers.append((response.status_code, content, response.headers.get("content-type")))
            return answers


async def _both(tiny_model: TinyModel, home: Path) -> tuple[list, list]:
    worker = WorkerServer(
        WorkerSettings(
            home=home, bind="tcp://127.0.0.1:0", registry_uri=tiny_model.registry.uri, models=tiny_model.ref,
            metrics_port=0, poll_interval_s=0,
        )
    )  # fmt: skip
    await worker.start()
    try:
        await worker.load_models()
        calls = _calls(tiny_model.name)
        common = {"home": home, "workers": worker.endpoint, "ping_interval_s": 0.05, "max_body_bytes": 4096}
        fast = await _answers(GatewaySettings(**common, infer_fast_path=True), calls)
        routed = await _answers(GatewaySettings(**common, infer_fast_path=False), calls)
        return fast, routed
    finally:
        await worker.close()


def test_the_fast_path_answers_like_the_route(tiny_model: TinyModel, tmp_path: Path) -> None:
    fast, routed = asyncio.run(_both(tiny_model, tmp_path))
    statuses = [status for status, _, _ in fast]
    assert statuses[:5] == [200, 200, 200, 200, 200], fast[:5]
    assert fast[2][1]["model_version"] == "1"
    assert all(400 <= status < 500 for status in statuses[5:]), fast
    assert fast == routed


def test_only_infer_paths_match() -> None:
    assert match_infer_path("/v2/models/m/infer") == ("m", None)
    assert match_infer_path("/v2/models/m/versions/3/infer") == ("m", "3")
    for path in ("/v2/models//infer", "/v2/models/m/ready", "/v2/models/m/infer/", "/v2/models/m/versions//infer"):
        assert match_infer_path(path) is None, path
