"""Fuzz a real gateway (and worker) from its own OpenAPI schema with schemathesis.

Every operation the schema describes gets generated requests, both fitting the schema (positive) and not
(negative); operations with a ``{model}`` path also get them with the served models' names and versions, so
fuzzed bodies reach the codec and the worker instead of stopping at "model not found", and a valid echo body
gets fuzzed headers. For every answer:

- no server error: no 5xx, except 504 when the request itself asked for a deadline too short to meet;
- no hang: each call must answer within ``CALL_TIMEOUT_S``;
- every error carries the JSON body ``{"error": "<message>"}``.

Examples are derandomized, so a run is reproducible, and bounded per operation, so the file stays well under a
minute including the stack's start.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode

from tests.support.stack import Registry, Stack

SERVED = ("echo", "ranker")
EXAMPLES_PER_OPERATION = 60
CALL_TIMEOUT_S = 10.0
TIMEOUT_HEADER = "x-request-timeout-ms"
SHORT_DEADLINE_MS = 50.0
"""A request that asks for a deadline this short may fairly get 504: the worker cannot answer in time."""
FILE_BUDGET_S = 60.0
JSON = "application/json"
ECHO_BODY = {"inputs": [{"name": "x", "shape": [2, 16], "datatype": "FP32", "data": list(range(32))}]}
"""A valid echo request: fuzzing its headers and query must not break it either."""


@pytest.fixture(scope="module")
def gateway(registry: Registry, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    stack = Stack(registry, tmp_path_factory.mktemp("fuzz-logs"))
    try:
        stack.start_worker(models="echo@champion,ranker@champion")
        yield stack.start_gateway()
    finally:
        stack.stop()


def _asked_short_deadline(headers: dict[str, Any] | None) -> bool:
    for name, value in (headers or {}).items():
        if name.lower() == TIMEOUT_HEADER:
            try:
                return float(value) <= SHORT_DEADLINE_MS
            except (TypeError, ValueError):
                return False
    return False


def _problem(case: schemathesis.Case, response: schemathesis.Response) -> str | None:
    """What is wrong with this answer, or None."""
    status = response.status_code
    if status >= 500 and not (status == 504 and _asked_short_deadline(case.headers)):
        return f"server error {status}"
    if status < 400:
        return None
    try:
        body = response.json()
    except ValueError:
        return f"{status} without a JSON body: {response.content[:200]!r}"
    if not (isinstance(body, dict) and isinstance(body.get("error"), str) and body["error"]):
        return f"{status} without an error message: {body!r}"
    return None


def _served_paths(gateway: str) -> list[dict[str, str]]:
    """Path parameters naming each served model, and each with a served version."""
    found: list[dict[str, str]] = []
    for model in SERVED:
        versions = httpx.get(f"{gateway}/v2/models/{model}", timeout=CALL_TIMEOUT_S).json()["versions"]
        found += [{"model": model}, {"model": model, "version": versions[-1]}]
    return found


def _strategies(
    operation: schemathesis.APIOperation, served: list[dict[str, str]]
) -> list[st.SearchStrategy[schemathesis.Case]]:
    """Random cases, and cases on the served models (and versions), fitting the schema and not."""
    modes = [GenerationMode.POSITIVE, GenerationMode.NEGATIVE]
    strategies = [operation.as_strategy(mode) for mode in modes]
    names = set(re.findall(r"{(\w+)}", operation.path))
    for path in served:
        if set(path) == names:
            strategies += [operation.as_strategy(mode, path_parameters=path) for mode in modes]
            if operation.method.upper() == "POST" and path["model"] == "echo":
                strategies.append(operation.as_strategy(path_parameters=path, body=ECHO_BODY, media_type=JSON))
    return strategies


def test_fuzzed_requests_get_no_server_errors_and_json_error_bodies(gateway: str) -> None:
    started = time.monotonic()
    schema = schemathesis.openapi.from_url(f"{gateway}/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    served = _served_paths(gateway)
    assert {op.path for op in operations} >= {"/v2/models/{model}/infer", "/v1/recommendations", "/v2/health/ready"}
    problems: list[str] = []
    calls = 0

    for operation in operations:

        @settings(
            max_examples=EXAMPLES_PER_OPERATION,
            deadline=None,
            database=None,
            derandomize=True,
            phases=[Phase.explicit, Phase.generate],
            suppress_health_check=list(HealthCheck),
        )
        @given(case=st.one_of(_strategies(operation, served)))
        def fuzz(case: schemathesis.Case) -> None:
            nonlocal calls
            calls += 1
            response = case.call(base_url=gateway, timeout=CALL_TIMEOUT_S)
            problem = _problem(case, response)
            if problem is not None:
                problems.append(f"{case.method} {case.formatted_path}: {problem}\n  {case.as_curl_command()}")

        fuzz()

    assert not problems, f"{len(problems)} of {calls} fuzzed calls went wrong:\n" + "\n".join(problems[:10])
    assert calls >= len(operations) * 10
    assert time.monotonic() - started < FILE_BUDGET_S
