"""API-key authentication, model authorization and rate limits, as a middleware on a tiny app."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route
from starlette.types import ASGIApp

from tandem.common.settings import GatewaySettings
from tandem.gateway.auth import (
    ApiKey,
    AuthMiddleware,
    AuthPolicy,
    digest_of,
    load_api_keys_file,
    parse_api_keys,
)
from tandem.keys_cli import api_key_entry, new_api_key

ALL_KEY = "tdm_all-models-key"
RANKER_KEY = "tdm_ranker-only-key"


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


async def _echo(request: Request) -> JSONResponse:
    return JSONResponse({"path": request.url.path, "key": request.scope.get("state", {}).get("api_key")})


class AppClient:
    """A synchronous client of an ASGI app in process (httpx's ASGI transport: no sockets)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    def request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        async def send() -> httpx.Response:
            transport = httpx.ASGITransport(app=self.app)
            async with httpx.AsyncClient(transport=transport, base_url="http://gateway") as client:
                return await client.request(method, path, **kwargs)

        return asyncio.run(send())

    def get(self, path: str, **kwargs: Any) -> httpx.Response:
        return self.request("GET", path, **kwargs)

    def post(self, path: str, **kwargs: Any) -> httpx.Response:
        return self.request("POST", path, **kwargs)


def _client(policy: AuthPolicy) -> AppClient:
    routes = [
        Route("/v2/health/live", _echo),
        Route("/v2/health/ready", _echo),
        Route("/metrics", _echo),
        Route("/v2", _echo),
        Route("/v2/models/{model}", _echo),
        Route("/v2/models/{model}/infer", _echo, methods=["POST"]),
        Route("/v2/models/{model}/versions/{version}/infer", _echo, methods=["POST"]),
        Route("/v1/recommendations", _echo, methods=["POST"]),
    ]
    app = Starlette(routes=routes)
    app.add_middleware(AuthMiddleware, policy=policy)
    return AppClient(app)


def _settings(**fields: object) -> GatewaySettings:
    defaults: dict[str, object] = {
        "api_keys": f"{digest_of(ALL_KEY)}:*,{digest_of(RANKER_KEY)}:ranker",
        "ranker_model": "ranker",
    }
    return GatewaySettings(**{**defaults, **fields})


def _bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


@pytest.fixture
def client() -> AppClient:
    return _client(AuthPolicy.from_settings(_settings()))


def test_without_a_key_every_guarded_path_is_401_with_a_bearer_challenge(client: AppClient) -> None:
    for method, path in [("POST", "/v2/models/ranker/infer"), ("GET", "/v2"), ("POST", "/v1/recommendations")]:
        answer = client.request(method, path)
        assert answer.status_code == 401, path
        assert answer.headers["www-authenticate"].startswith("Bearer")
        assert "Authorization: Bearer" in answer.json()["error"]


@pytest.mark.parametrize(
    "header",
    ["Bearer tdm_wrong", "Basic dXNlcjpwYXNz", f"Token {ALL_KEY}", "Bearer", f"Bearer  {ALL_KEY}x", ALL_KEY],
)
def test_a_wrong_or_malformed_key_is_401(client: AppClient, header: str) -> None:
    answer = client.post("/v2/models/ranker/infer", headers={"Authorization": header})
    assert answer.status_code == 401
    assert "Bearer" in answer.headers["www-authenticate"]
    assert answer.json()["error"]


def test_an_invalid_key_is_told_apart_from_a_missing_one(client: AppClient) -> None:
    answer = client.get("/v2", headers=_bearer("tdm_wrong"))
    assert 'error="invalid_token"' in answer.headers["www-authenticate"]
    assert answer.json() == {"error": "the API key is not valid"}


def test_a_valid_key_passes_and_its_name_reaches_the_app(client: AppClient) -> None:
    answer = client.post("/v2/models/echo/infer", headers=_bearer(ALL_KEY))
    assert answer.status_code == 200
    assert answer.json()["key"] == f"key-{digest_of(ALL_KEY)[:8]}"
    assert client.post("/v2/models/ranker/infer", headers={"authorization": f"bearer {RANKER_KEY}"}).status_code == 200


def test_a_key_for_another_model_is_403_on_every_path_naming_the_model(client: AppClient) -> None:
    headers = _bearer(RANKER_KEY)
    for method, path in [
        ("POST", "/v2/models/echo/infer"),
        ("POST", "/v2/models/echo/versions/3/infer"),
        ("GET", "/v2/models/echo"),
    ]:
        answer = client.request(method, path, headers=headers)
        assert answer.status_code == 403, path
        assert "'echo'" in answer.json()["error"]
    assert client.post("/v2/models/ranker/versions/2/infer", headers=headers).status_code == 200
    assert client.get("/v2", headers=headers).status_code == 200  # names no model


def test_recommendations_are_authorized_against_the_ranker_model() -> None:
    policy = AuthPolicy.from_settings(_settings(ranker_model="other"))
    client = _client(policy)
    assert client.post("/v1/recommendations", headers=_bearer(RANKER_KEY)).status_code == 403
    assert client.post("/v1/recommendations", headers=_bearer(ALL_KEY)).status_code == 200
    assert policy.forbidden == 1


def test_health_probes_and_metrics_need_no_key_and_the_exemptions_are_configurable() -> None:
    open_client = _client(AuthPolicy.from_settings(_settings()))
    for path in ("/v2/health/live", "/v2/health/ready", "/metrics"):
        assert open_client.get(path).status_code == 200, path
    strict = _client(AuthPolicy.from_settings(_settings(auth_exempt_paths="/v2/health/live")))
    assert strict.get("/v2/health/live").status_code == 200
    assert strict.get("/metrics").status_code == 401
    assert strict.get("/metrics", headers=_bearer(ALL_KEY)).status_code == 200


def test_without_configured_keys_nothing_is_checked() -> None:
    client = _client(AuthPolicy.from_settings(GatewaySettings()))
    assert client.post("/v2/models/echo/infer").status_code == 200
    assert client.post("/v2/models/echo/infer", headers=_bearer("anything")).status_code == 200


def test_past_its_rate_a_key_gets_429_with_retry_after_and_others_are_unaffected() -> None:
    clock = FakeClock()
    policy = AuthPolicy.from_settings(_settings(api_key_rate_per_s=0.5, api_key_burst=2), clock=clock)
    client = _client(policy)
    statuses = [client.post("/v2/models/ranker/infer", headers=_bearer(ALL_KEY)).status_code for _ in range(2)]
    assert statuses == [200, 200]
    refused = client.post("/v2/models/ranker/infer", headers=_bearer(ALL_KEY))
    assert refused.status_code == 429
    assert refused.headers["retry-after"] == "2"
    assert "rate limit" in refused.json()["error"]
    assert client.post("/v2/models/ranker/infer", headers=_bearer(RANKER_KEY)).status_code == 200
    clock.now += 2.0
    assert client.post("/v2/models/ranker/infer", headers=_bearer(ALL_KEY)).status_code == 200
    assert policy.limiter.limited == 1


def test_a_refused_key_spends_no_tokens() -> None:
    clock = FakeClock()
    client = _client(AuthPolicy.from_settings(_settings(api_key_rate_per_s=1.0, api_key_burst=1), clock=clock))
    assert client.post("/v2/models/echo/infer", headers=_bearer(RANKER_KEY)).status_code == 403
    assert client.post("/v2/models/ranker/infer", headers=_bearer(RANKER_KEY)).status_code == 200


def test_the_keys_file_gives_names_models_and_rates(tmp_path: Path) -> None:
    path = tmp_path / "keys.json"
    path.write_text(
        json.dumps(
            {
                "keys": [
                    {"name": "web", "sha256": digest_of("k1"), "models": ["ranker", "echo"], "rate_per_s": 5},
                    {"sha256": digest_of("k2").upper(), "models": "*"},
                ]
            }
        )
    )
    web, other = load_api_keys_file(path, rate_per_s=1.0, burst=3)
    assert web == ApiKey("web", digest_of("k1"), frozenset({"ranker", "echo"}), 5.0, 3.0)
    assert other.models is None and other.rate_per_s == 1.0 and other.digest == digest_of("k2")
    policy = AuthPolicy.from_settings(GatewaySettings(api_keys_file=str(path)))
    found = policy.authenticate(b"k1")
    assert found is not None and found.name == "web" and found.burst == 5.0  # one second's worth of its own rate
    assert policy.authenticate(b"k3") is None


def test_burst_defaults_to_one_second_of_the_rate() -> None:
    (key,) = parse_api_keys(f"{digest_of('k')}:*", rate_per_s=20.0)
    assert key.burst == 20.0
    (slow,) = parse_api_keys(f"{digest_of('k')}:*", rate_per_s=0.1)
    assert slow.burst == 1.0


@pytest.mark.parametrize(
    "text",
    [
        "tdm_a-key-in-clear:*",  # never a key in clear
        digest_of("k"),  # no models
        f"{digest_of('k')}:",  # empty models
        f"{digest_of('k')[:-1]}:*",  # not 64 hex digits
        f"{digest_of('k')}:*,{digest_of('k')}:ranker",  # the same key twice
    ],
)
def test_malformed_key_settings_fail_at_start(text: str) -> None:
    with pytest.raises(ValueError):
        AuthPolicy.from_settings(GatewaySettings(api_keys=text))


@pytest.mark.parametrize(
    "document",
    ["not json", "[]", '{"keys": [1]}', '{"keys": [{"sha256": "abc", "models": "*"}]}', '{"keys": [{"models": "*"}]}'],
)
def test_a_malformed_keys_file_fails_at_start(tmp_path: Path, document: str) -> None:
    path = tmp_path / "keys.json"
    path.write_text(document)
    with pytest.raises(ValueError):
        load_api_keys_file(path)


def test_a_missing_keys_file_fails_at_start(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="cannot read"):
        AuthPolicy.from_settings(GatewaySettings(api_keys_file=str(tmp_path / "absent.json")))


def test_tandem_keys_api_output_configures_a_working_key() -> None:
    key = new_api_key()
    assert key.startswith("tdm_") and len(key) > 40
    assert new_api_key() != key
    entry = api_key_entry(key, "ranker, echo")
    assert entry == f"{digest_of(key)}:ranker|echo"
    client = _client(AuthPolicy.from_settings(GatewaySettings(api_keys=entry)))
    assert client.post("/v2/models/echo/infer", headers=_bearer(key)).status_code == 200
    assert client.post("/v2/models/other/infer", headers=_bearer(key)).status_code == 403
    assert api_key_entry(key, "*").endswith(":*")
    assert api_key_entry(key, "").endswith(":*")
