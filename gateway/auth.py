"""API-key authentication, per-model authorization and per-key rate limits for the gateway's HTTP surface.

Callers send ``Authorization: Bearer <key>``. When keys are configured every path needs a valid key except the
exempt ones (``auth_exempt_paths``: by default the two health probes and ``/metrics``, which orchestrators and
Prometheus call without credentials). The answers, each a JSON ``{"error": ...}`` body:

- 401 with ``WWW-Authenticate: Bearer``: no key, or a key that matches no configured hash;
- 403: a valid key that may not use the model the path names (``/v2/models/{model}/...``; for
  ``/v1/recommendations`` the model is ``ranker_model``). Paths that name no model (``/v2``, ``/openapi.json``)
  take any valid key;
- 429 with ``Retry-After``: the key's token bucket is empty (``gateway/rate_limit.py``).

With no keys configured the middleware passes every request through: the embedded stack stays keyless.

Keys are stored only as SHA-256 hex digests, never in clear. SHA-256 rather than a slow password hash (bcrypt,
argon2) on purpose: slow hashes protect low-entropy human passwords against guessing; these keys carry 256
random bits (``tandem keys api``), which no amount of hashing speed makes guessable, and a slow hash would cost
every request tens of milliseconds. Digests are compared with ``hmac.compare_digest`` against every configured
key, with no early exit, so timing says nothing about which digest, or how much of one, matched.

Configuration: ``api_keys`` holds comma-separated ``SHA256HEX:MODELS`` entries, ``MODELS`` being ``*`` (all
models) or ``name1|name2``; ``api_keys_file`` names a JSON file for keys that need a name (shown in logs
instead of a digest prefix) or a rate of their own::

    {"keys": [{"name": "web", "sha256": "9f86d0...", "models": ["ranker"], "rate_per_s": 50, "burst": 100},
              {"sha256": "60303a...", "models": "*"}]}

Keys without a rate of their own get ``api_key_rate_per_s`` and ``api_key_burst`` (rate 0: unlimited; burst 0:
one second's worth of the rate). Both
sources are read once, when the app is created; rotate a key by adding the new digest, rolling the gateways,
handing out the new key, then removing the old digest.

A pure ASGI middleware like ``gateway/admission.py``: refused requests cost one SHA-256 and never reach the
routes. Runs on the event loop thread.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import re
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from starlette.types import ASGIApp, Receive, Scope, Send

from tandem.common.settings import GatewaySettings, split_list
from tandem.gateway.limits import send_json_error
from tandem.gateway.rate_limit import Clock, RateLimiter, retry_after_s

log = logging.getLogger("tandem.gateway.auth")

ALL_MODELS = "*"
MODEL_SEPARATOR = "|"
SHA256_HEX = re.compile(r"^[0-9a-f]{64}$")
RECOMMENDATIONS_PATH = "/v1/recommendations"
_MODEL_PATH = re.compile(r"^/v2/models/([^/]+)(?:/|$)")
_BEARER = b"bearer"
_LABEL_DIGEST_CHARS = 8
_CHALLENGE = b'Bearer realm="tandem"'
_INVALID_CHALLENGE = b'Bearer realm="tandem", error="invalid_token"'


def digest_of(key: str | bytes) -> str:
    """The SHA-256 hex digest of an API key, as configured."""
    return hashlib.sha256(key.encode() if isinstance(key, str) else key).hexdigest()


@dataclass(frozen=True, slots=True)
class ApiKey:
    """One configured key: its digest, the models it may use (None: all) and its rate limit (0: none)."""

    name: str
    digest: str
    models: frozenset[str] | None
    rate_per_s: float = 0.0
    burst: float = 1.0

    def allows(self, model: str) -> bool:
        """True when this key may use ``model``."""
        return self.models is None or model in self.models


def _models(value: Any, where: str) -> frozenset[str] | None:
    if value == ALL_MODELS:
        return None
    names = value.split(MODEL_SEPARATOR) if isinstance(value, str) else value
    if not isinstance(names, list) or not names or not all(isinstance(n, str) and n.strip() for n in names):
        raise ValueError(f"{where}: models must be '*' or a non-empty list of model names")
    return frozenset(n.strip() for n in names)


def _digest(value: Any, where: str) -> str:
    digest = value.strip().lower() if isinstance(value, str) else ""
    if not SHA256_HEX.match(digest):
        # Refuse what looks like a key in clear: configuration must never hold one.
        raise ValueError(f"{where}: expected the key's SHA-256 as 64 hex digits (see `tandem keys api`)")
    return digest


def burst_for(rate_per_s: float, burst: float) -> float:
    """A bucket's size: ``burst`` when given, else one second's worth of the rate (at least one request)."""
    return max(1.0, float(burst) if burst else float(rate_per_s))


def parse_api_keys(text: str, *, rate_per_s: float = 0.0, burst: float = 0.0) -> list[ApiKey]:
    """Keys from the ``api_keys`` setting: comma-separated ``SHA256HEX:MODELS`` entries."""
    keys = []
    for index, entry in enumerate(split_list(text)):
        digest, sep, models = entry.partition(":")
        where = f"api_keys entry {index + 1}"
        if not sep:
            raise ValueError(f"{where}: expected SHA256HEX:MODELS, e.g. <digest>:* or <digest>:ranker|echo")
        digest = _digest(digest, where)
        label = f"key-{digest[:_LABEL_DIGEST_CHARS]}"
        keys.append(ApiKey(label, digest, _models(models, where), rate_per_s, burst_for(rate_per_s, burst)))
    return keys


def load_api_keys_file(path: Path, *, rate_per_s: float = 0.0, burst: float = 0.0) -> list[ApiKey]:
    """Keys from an ``api_keys_file`` (the JSON layout in the module docstring)."""
    try:
        document = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ValueError(f"cannot read the API keys file {path}: {exc}") from None
    entries = document.get("keys") if isinstance(document, dict) else None
    if not isinstance(entries, list):
        raise ValueError(f"{path}: expected an object with a 'keys' list")
    keys = []
    for index, entry in enumerate(entries):
        where = f"{path}: keys[{index}]"
        if not isinstance(entry, dict):
            raise ValueError(f"{where} must be an object")
        digest = _digest(entry.get("sha256"), where)
        name = entry.get("name") or f"key-{digest[:_LABEL_DIGEST_CHARS]}"
        key_rate = entry.get("rate_per_s", rate_per_s)
        key_burst = entry.get("burst", burst)
        if not isinstance(name, str) or not all(
            isinstance(v, (int, float)) and not isinstance(v, bool) and v >= 0 for v in (key_rate, key_burst)
        ):
            raise ValueError(f"{where}: name must be a string, rate_per_s and burst non-negative numbers")
        models = _models(entry.get("models"), where)
        keys.append(ApiKey(name, digest, models, float(key_rate), burst_for(key_rate, key_burst)))
    return keys


class AuthPolicy:
    """Who may call what: the configured keys, the exempt paths and the rate limiter. Event loop thread only."""

    def __init__(
        self,
        keys: Iterable[ApiKey],
        *,
        exempt_paths: Iterable[str] = (),
        ranker_model: str = "ranker",
        clock: Clock = time.monotonic,
    ) -> None:
        self.keys = tuple(keys)
        digests = [key.digest for key in self.keys]
        if len(set(digests)) != len(digests):
            raise ValueError("the same API key digest is configured twice")
        self.exempt_paths = frozenset(exempt_paths)
        self.ranker_model = ranker_model
        self.limiter = RateLimiter(clock)
        self.unauthenticated = 0
        self.forbidden = 0

    @classmethod
    def from_settings(cls, settings: GatewaySettings, clock: Clock = time.monotonic) -> AuthPolicy:
        """The policy the settings configure; raises ValueError for a malformed key entry or file."""
        defaults = {"rate_per_s": settings.api_key_rate_per_s, "burst": float(settings.api_key_burst)}
        keys = parse_api_keys(settings.api_keys, **defaults)
        if settings.api_keys_file:
            keys += load_api_keys_file(Path(settings.api_keys_file), **defaults)
        return cls(
            keys,
            exempt_paths=split_list(settings.auth_exempt_paths),
            ranker_model=settings.ranker_model,
            clock=clock,
        )

    @property
    def enabled(self) -> bool:
        """True when some key is configured: then every non-exempt path needs one."""
        return bool(self.keys)

    def authenticate(self, token: bytes) -> ApiKey | None:
        """The configured key whose digest is the token's, compared in constant time against every key."""
        presented = digest_of(token)
        found = None
        for key in self.keys:
            if hmac.compare_digest(key.digest, presented):
                found = key
        return found

    def model_of(self, path: str) -> str | None:
        """The model a request path acts on; None for paths that name no model."""
        if path == RECOMMENDATIONS_PATH:
            return self.ranker_model
        match = _MODEL_PATH.match(path)
        return match.group(1) if match else None


def bearer_token(scope: Scope) -> bytes | None:
    """The token of the first ``Authorization: Bearer`` header; None when there is none or it is malformed."""
    for name, value in scope["headers"]:
        if name == b"authorization":
            scheme, _, token = value.strip().partition(b" ")
            token = token.strip()
            return token if scheme.lower() == _BEARER and token else None
    return None


class AuthMiddleware:
    """Refuses requests without a valid, authorized, in-rate API key (401, 403, 429). See the module docstring."""

    def __init__(self, app: ASGIApp, policy: AuthPolicy) -> None:
        self.app = app
        self.policy = policy

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        policy = self.policy
        if scope["type"] != "http" or not policy.enabled or scope["path"] in policy.exempt_paths:
            await self.app(scope, receive, send)
            return
        token = bearer_token(scope)
        key = policy.authenticate(token) if token is not None else None
        if key is None:
            policy.unauthenticated += 1
            if token is None:
                message, challenge = "this endpoint needs an API key: send 'Authorization: Bearer <key>'", _CHALLENGE
            else:
                message, challenge = "the API key is not valid", _INVALID_CHALLENGE
            await send_json_error(send, 401, message, [(b"www-authenticate", challenge)])
            return
        model = policy.model_of(scope["path"])
        if model is not None and not key.allows(model):
            policy.forbidden += 1
            log.debug("API key %s refused on model %r", key.name, model)
            await send_json_error(send, 403, f"this API key may not use model {model!r}")
            return
        wait_s = policy.limiter.check(key.digest, key.rate_per_s, key.burst)
        if wait_s:
            retry = retry_after_s(wait_s)
            message = f"rate limit of {key.rate_per_s:g} requests/s for this API key exceeded; retry in {retry} s"
            await send_json_error(send, 429, message, [(b"retry-after", str(retry).encode())])
            return
        scope.setdefault("state", {})["api_key"] = key.name  # who called, for logs and metrics downstream
        await self.app(scope, receive, send)
