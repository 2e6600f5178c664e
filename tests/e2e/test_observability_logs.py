"""Structured logs of real gateway and worker processes: JSON lines, one per request, no personal data."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest

from tandem.common.features import NUM_FEATURES
from tandem.common.privacy import IdHasher
from tests.support.processes import wait_until
from tests.support.stack import Registry, Stack

SALT = "log-test-salt"
API_KEY = "tk-logs-0123456789abcdef"
KEY_NAME = "web"
USERS = ("u00042", "u00043", "u01999")
V2_USER = "u00007"
CALLER_REQUEST_ID = "caller-chosen-id-17"
REQUEST_LOGGER = "tandem.gateway.requests"
FIELDS = {"ts", "level", "logger", "msg", "request_id", "method", "route", "status", "latency_ms", "model", "version"}
FIELDS |= {"api_key", "user", "trace_id"}
LOG_WAIT_S = 10.0
READY_ROUTE = "/v2/health/ready"


@pytest.fixture(scope="module")
def stack(registry: Registry, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    logs = tmp_path_factory.mktemp("log-test")
    keys = logs / "keys.json"
    digest = hashlib.sha256(API_KEY.encode()).hexdigest()
    keys.write_text(json.dumps({"keys": [{"name": KEY_NAME, "sha256": digest, "models": "*"}]}))
    stack = Stack(registry, logs)
    try:
        stack.start_worker(models="ranker@champion")
        stack.start_gateway(env={"TANDEM_PRIVACY_SALT": SALT, "TANDEM_API_KEYS_FILE": str(keys)})
        yield stack
    finally:
        stack.stop()


def _log_path(stack: Stack, kind: str) -> Path:
    (path,) = stack.logs.glob(f"{kind}-*.log")
    return path


def _json_lines(path: Path, offset: int = 0) -> list[dict]:
    with path.open("rb") as file:
        file.seek(offset)
        text = file.read().decode()
    return [json.loads(line) for line in text.splitlines() if line.strip()]  # every line must parse


def test_one_json_line_per_request_with_hashed_ids_and_no_personal_data(stack: Stack) -> None:
    path = _log_path(stack, "gateway")
    start = path.stat().st_size  # the start-up readiness probes are logged before this
    auth = {"authorization": f"Bearer {API_KEY}"}
    rows = np.zeros((2, NUM_FEATURES), np.float32)
    v2 = {
        "inputs": [{"name": "features", "shape": [2, NUM_FEATURES], "datatype": "FP32", "data": rows.ravel().tolist()}]
    }
    with httpx.Client(base_url=stack.url, timeout=10) as client:
        sent = [
            client.post("/v1/recommendations", json={"user_id": user, "k": 3}, headers=auth).status_code
            for user in USERS
        ]
        sent.append(
            client.post(
                "/v2/models/ranker/infer",
                json=v2,
                headers={**auth, "x-user-id": V2_USER, "x-request-id": CALLER_REQUEST_ID},
            ).status_code
        )
        sent.append(client.post("/v1/recommendations", json={"user_id": USERS[0]}).status_code)  # no key: 401
        sent.append(client.get("/v2/models/nope", headers=auth).status_code)  # 404
    assert sent == [200, 200, 200, 200, 401, 404]

    def requests_logged() -> list[dict]:
        # The last readiness probe of the start-up may be logged after ``start``: only this test's routes count.
        lines = [line for line in _json_lines(path, start) if line.get("logger") == REQUEST_LOGGER]
        return [line for line in lines if line["route"] != READY_ROUTE]

    wait_until(lambda: len(requests_logged()) >= len(sent), what="request log lines", timeout_s=LOG_WAIT_S)
    lines = requests_logged()
    assert [line["status"] for line in lines] == sent  # exactly one line per request, in order
    assert all(set(line) >= FIELDS and line["level"] == "INFO" for line in lines)

    hasher = IdHasher(SALT)
    recommend = lines[: len(USERS)]
    assert [line["user"] for line in recommend] == [hasher.hash_id(user) for user in USERS]
    assert {(line["route"], line["model"], line["version"], line["api_key"]) for line in recommend} == {
        ("/v1/recommendations", "ranker", "1", KEY_NAME)
    }
    infer = lines[len(USERS)]
    assert (infer["route"], infer["model"], infer["version"]) == ("/v2/models/{model}/infer", "ranker", "1")
    assert infer["user"] == hasher.hash_id(V2_USER) and infer["request_id"] == hasher.hash_id(CALLER_REQUEST_ID)
    assert lines[-2]["api_key"] is None and lines[-2]["route"] == "unmatched"  # refused by auth, before routing
    assert lines[-1]["route"] == "/v2/models/{model}" and lines[-1]["model"] == "nope"
    assert len({line["request_id"] for line in lines}) == len(lines)

    whole = path.read_text()
    for secret in (*USERS, V2_USER, CALLER_REQUEST_ID, API_KEY):
        assert secret not in whole, f"{secret!r} reached the gateway log"


def test_every_process_logs_json_lines(stack: Stack) -> None:
    gateway = _json_lines(_log_path(stack, "gateway"))
    worker = _json_lines(_log_path(stack, "worker"))
    assert any(line["logger"] == "tandem.gateway.workers" for line in gateway)
    assert any("loaded ranker version" in line["msg"] for line in worker)
    assert all({"ts", "level", "logger", "msg"} <= set(line) for line in [*gateway, *worker])
