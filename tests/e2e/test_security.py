"""Security end to end, with real processes: API keys, rate limits, every request limit, and CURVE links."""

from __future__ import annotations

import json
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
import zmq
from zmq.utils import z85

from tandem.common import wire
from tandem.common.curve import CurveClientConfig, secure_client
from tandem.common.settings import GatewaySettings
from tandem.gateway.auth import digest_of
from tandem.processes import child_environment, free_port, start, stop, tandem_command, wait_http_ok
from tests.support.stack import Registry, Stack

ALL_KEY = "tdm_e2e-all-models"
RANKER_KEY = "tdm_e2e-ranker-only"
LIMITED_KEY = "tdm_e2e-two-requests"
ECHO_WIDTH = 16
LIMITS = {
    "TANDEM_MAX_BODY_BYTES": "65536",
    "TANDEM_MAX_HEADER_BYTES": "8192",
    "TANDEM_MAX_TENSOR_ELEMENTS": "1000",
    "TANDEM_MAX_REQUEST_ROWS": "8",
    "TANDEM_MAX_STRING_BYTES": "16",
    "TANDEM_MAX_REQUEST_ID_CHARS": "32",
    "TANDEM_MAX_CANDIDATES": "5",
}
START_TIMEOUT_S = 90.0
REFUSED_WAIT_MS = 1000


@pytest.fixture(scope="module")
def secured(registry: Registry, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """One worker and a gateway that needs API keys and has small limits."""
    logs = tmp_path_factory.mktemp("secured-logs")
    keys_file = logs / "keys.json"
    limited = {"name": "limited", "sha256": digest_of(LIMITED_KEY), "models": "*", "rate_per_s": 0.2, "burst": 2}
    keys_file.write_text(json.dumps({"keys": [limited]}))
    env = {
        "TANDEM_API_KEYS": f"{digest_of(ALL_KEY)}:*,{digest_of(RANKER_KEY)}:ranker",
        "TANDEM_API_KEYS_FILE": str(keys_file),
        **LIMITS,
    }
    stack = Stack(registry, logs)
    try:
        stack.start_worker()
        stack.start_gateway(env=env)
        yield stack
    finally:
        stack.stop()


def _echo_body(rows: int = 1, request_id: str = "r") -> dict:
    x = np.arange(rows * ECHO_WIDTH, dtype=np.float32).reshape(rows, ECHO_WIDTH)
    return {
        "id": request_id,
        "inputs": [{"name": "x", "shape": [rows, ECHO_WIDTH], "datatype": "FP32", "data": x.ravel().tolist()}],
    }


def _bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


# ---------------------------------------------------------------------------------------------- API keys


def test_a_valid_key_is_served_and_health_needs_none(secured: Stack) -> None:
    answer = httpx.post(f"{secured.url}/v2/models/echo/infer", json=_echo_body(2), headers=_bearer(ALL_KEY))
    assert answer.status_code == 200, answer.text
    assert answer.json()["outputs"][0]["data"] == list(range(2 * ECHO_WIDTH))
    assert httpx.get(f"{secured.url}/v2/health/live").status_code == 200
    assert httpx.get(f"{secured.url}/v2/health/ready").status_code == 200


def test_no_key_and_a_wrong_key_are_401(secured: Stack) -> None:
    for headers in ({}, _bearer("tdm_not-a-key")):
        answer = httpx.post(f"{secured.url}/v2/models/echo/infer", json=_echo_body(), headers=headers)
        assert answer.status_code == 401
        assert answer.headers["www-authenticate"].startswith("Bearer")
        assert answer.json()["error"]
    assert httpx.get(f"{secured.url}/v2/models/echo").status_code == 401
    assert httpx.get(f"{secured.url}/openapi.json").status_code == 401


def test_a_key_for_another_model_is_403(secured: Stack) -> None:
    answer = httpx.post(f"{secured.url}/v2/models/echo/infer", json=_echo_body(), headers=_bearer(RANKER_KEY))
    assert answer.status_code == 403
    assert "'echo'" in answer.json()["error"]
    allowed = httpx.post(
        f"{secured.url}/v1/recommendations",
        json={"user_id": "u00042", "candidates": ["p00001", "p00002"], "k": 2},
        headers=_bearer(RANKER_KEY),
    )
    assert allowed.status_code == 200, allowed.text


def test_a_key_past_its_rate_is_429_with_retry_after(secured: Stack) -> None:
    statuses = []
    for _ in range(3):
        answer = httpx.get(f"{secured.url}/v2", headers=_bearer(LIMITED_KEY))
        statuses.append(answer.status_code)
    assert statuses == [200, 200, 429]
    assert int(answer.headers["retry-after"]) >= 1
    assert "rate limit" in answer.json()["error"]
    assert httpx.get(f"{secured.url}/v2", headers=_bearer(ALL_KEY)).status_code == 200  # others unaffected


# ------------------------------------------------------------------------------------------------ limits


def _infer(url: str, body: object, **kwargs: object) -> httpx.Response:
    return httpx.post(f"{url}/v2/models/echo/infer", json=body, headers=_bearer(ALL_KEY), **kwargs)


def _one_input(**tensor: object) -> dict:
    return {"inputs": [{"name": "x", **tensor}]}


@pytest.mark.parametrize(
    ("body", "status", "needle"),
    [
        (_one_input(shape=[8, 200], datatype="FP32", data=[]), 413, "limit is 1000"),
        (_echo_body(rows=9), 413, "the limit is 8"),
        (_one_input(shape=[1], datatype="BYTES", data=["x" * 17]), 413, "the limit is 16"),
        (_echo_body(request_id="r" * 33), 400, "the limit is 32"),
    ],
    ids=["tensor-elements", "rows", "bytes-element", "request-id"],
)
def test_each_infer_limit_has_its_4xx(secured: Stack, body: dict, status: int, needle: str) -> None:
    answer = _infer(secured.url, body)
    assert answer.status_code == status, answer.text
    assert needle in answer.json()["error"]


def test_within_the_limits_is_served(secured: Stack) -> None:
    assert _infer(secured.url, _echo_body(rows=8, request_id="r" * 32)).status_code == 200


def test_a_body_past_the_limit_is_413_on_every_route(secured: Stack) -> None:
    big = b"{" + b" " * 70000 + b"}"
    for path in ("/v2/models/echo/infer", "/v1/recommendations"):
        answer = httpx.post(
            f"{secured.url}{path}", content=big, headers={**_bearer(ALL_KEY), "content-type": "application/json"}
        )
        assert answer.status_code == 413, path
        assert "limit" in answer.json()["error"]

    def chunked() -> Iterator[bytes]:
        yield b'{"user_id": "u1", "candidates": ['
        for _ in range(10000):
            yield b'"p00001",' * 10
        yield b'"p00001"]}'

    answer = httpx.post(
        f"{secured.url}/v1/recommendations",
        content=chunked(),
        headers={**_bearer(ALL_KEY), "content-type": "application/json"},
    )
    assert answer.status_code == 413
    assert "limit of 65536" in answer.json()["error"]


def test_too_many_candidates_is_400(secured: Stack) -> None:
    body = {"user_id": "u00042", "candidates": [f"p{i:05d}" for i in range(6)]}
    answer = httpx.post(f"{secured.url}/v1/recommendations", json=body, headers=_bearer(ALL_KEY))
    assert answer.status_code == 400
    assert "at most 5" in answer.json()["error"]


def test_headers_past_the_limit_are_431_and_the_gateway_keeps_serving(secured: Stack) -> None:
    answer = httpx.get(f"{secured.url}/v2", headers={**_bearer(ALL_KEY), "X-Padding": "a" * 9000})
    assert answer.status_code == 431
    assert "8192" in answer.json()["error"]
    port = int(secured.url.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:  # one endless header line
        raw.sendall(b"GET /v2 HTTP/1.1\r\nHost: x\r\nX-Endless: ")
        sent = 0
        try:
            while sent < 10_000_000:
                raw.sendall(b"a" * 4096)
                sent += 4096
        except OSError:
            pass  # the gateway closed the connection
        # Loopback socket buffers absorb a few MB before the gateway reads; an unbounded parser takes it all.
        assert sent < 10_000_000, "the gateway read an endless header line without closing"
    assert httpx.get(f"{secured.url}/v2", headers=_bearer(ALL_KEY)).status_code == 200


# ------------------------------------------------------------------------------------------------- CURVE


def _keys(out: Path, name: str) -> dict[str, str]:
    """Run ``tandem keys curve`` and return the settings it prints, by name."""
    printed = subprocess.run(
        tandem_command("keys", "curve", "--out", str(out), "--gateway-name", name),
        env=child_environment(),
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return dict(line.strip().split("=", 1) for line in printed.splitlines() if line.strip().startswith("TANDEM_"))


def _ping(endpoint: str, curve: CurveClientConfig | None, timeout_ms: int) -> wire.Pong | None:
    context = zmq.Context()
    dealer = context.socket(zmq.DEALER)
    dealer.setsockopt(zmq.LINGER, 0)
    secure_client(dealer, curve)
    dealer.connect(endpoint)
    try:
        dealer.send_multipart(wire.encode(wire.Ping(1)))
        if not dealer.poll(timeout_ms):
            return None
        reply = wire.decode(dealer.recv_multipart())
        return reply if isinstance(reply, wire.Pong) else None
    finally:
        dealer.close(linger=0)
        context.term()


def _gateway_curve(printed: dict[str, str]) -> CurveClientConfig:
    """The CURVE configuration a gateway builds from the settings ``tandem keys curve`` printed."""
    config = CurveClientConfig.from_settings(
        GatewaySettings(
            curve_server_public_key_file=printed["TANDEM_CURVE_SERVER_PUBLIC_KEY_FILE"],
            curve_client_secret_key_file=printed["TANDEM_CURVE_CLIENT_SECRET_KEY_FILE"],
        )
    )
    assert config is not None
    return config


def _start(log_path: Path, env: dict[str, str], *args: str) -> subprocess.Popen[bytes]:
    with open(log_path, "wb") as log:
        return start(tandem_command(*args), env=child_environment(env), output=log)


def _stays_unready(url: str, seconds: float) -> bool:
    """True when the gateway at ``url`` answers not ready throughout ``seconds`` (many ping rounds)."""
    until = time.monotonic() + seconds
    while time.monotonic() < until:
        if httpx.get(f"{url}/v2/health/ready").status_code == 200:
            return False
    return True


def test_a_curve_worker_refuses_plain_and_unknown_clients_and_serves_its_gateway(
    registry: Registry, tmp_path: Path
) -> None:
    printed = _keys(tmp_path / "keys", "gateway")
    worker_env = {name: value for name, value in printed.items() if "SERVER_SECRET" in name or "CLIENT_KEYS" in name}
    gateway_env = {name: value for name, value in printed.items() if name not in worker_env}
    authorized = _gateway_curve(printed)
    stranger_public, stranger_secret = (z85.decode(key) for key in zmq.curve_keypair())
    stranger = CurveClientConfig(authorized.server_public_key, stranger_public, stranger_secret)
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    worker_args = ["--registry-uri", registry.uri, "--bind", endpoint, "--models", "echo@champion"]
    processes: list[subprocess.Popen[bytes]] = []
    try:
        worker = _start(tmp_path / "worker.log", {**worker_env, "TANDEM_TORCH_THREADS": "1"}, "worker", *worker_args)
        processes.append(worker)
        deadline = time.monotonic() + START_TIMEOUT_S
        while (pong := _ping(endpoint, authorized, 500)) is None or not pong.ready:
            assert worker.poll() is None and time.monotonic() < deadline, (tmp_path / "worker.log").read_text()
        assert _ping(endpoint, None, REFUSED_WAIT_MS) is None  # plain TCP
        assert _ping(endpoint, stranger, REFUSED_WAIT_MS) is None  # CURVE, with a key the worker was not given

        urls = {}
        for name, env in (("curve", gateway_env), ("plain", {})):
            port = free_port()
            urls[name] = f"http://127.0.0.1:{port}"
            gateway_args = ["--home", str(registry.home), "--port", str(port), "--workers", endpoint]
            processes.append(_start(tmp_path / f"gateway-{name}.log", env, "gateway", *gateway_args))
        assert wait_http_ok(f"{urls['curve']}/v2/health/ready", START_TIMEOUT_S, process=processes[1])
        body = {
            "inputs": [{"name": "x", "shape": [1, ECHO_WIDTH], "datatype": "FP32", "data": list(range(ECHO_WIDTH))}]
        }
        answer = httpx.post(f"{urls['curve']}/v2/models/echo/infer", json=body, timeout=10)
        assert answer.status_code == 200, answer.text
        assert answer.json()["outputs"][0]["data"] == list(range(ECHO_WIDTH))

        assert wait_http_ok(f"{urls['plain']}/v2/health/live", START_TIMEOUT_S, process=processes[2])
        assert _stays_unready(urls["plain"], seconds=1.0)  # a plain gateway never hears from a CURVE worker
        assert "refused a gateway" in (tmp_path / "worker.log").read_text()  # the stranger, logged by ZAP
    finally:
        for process in reversed(processes):
            stop(process)
