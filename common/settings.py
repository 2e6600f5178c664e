"""Settings of each Tandem process, read from ``TANDEM_*`` environment variables or given explicitly.

One class per process kind. Nothing reads the environment at import time: entry points build a settings object
and pass it down. Every field names its unit.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict


def default_home() -> Path:
    """Where local state lives unless ``--home``/``TANDEM_HOME`` says otherwise."""
    return Path(os.environ.get("TANDEM_HOME", ".tandem")).resolve()


def sqlite_registry_uri(home: Path) -> str:
    """The embedded registry: an MLflow sqlite store inside ``home``."""
    return f"sqlite:///{(home / 'mlflow.db').resolve()}"


def split_list(value: str) -> list[str]:
    """Split a comma-separated setting, dropping blanks."""
    return [part.strip() for part in value.split(",") if part.strip()]


class WorkerSettings(BaseSettings):
    """Settings of one worker process (``tandem worker``)."""

    model_config = SettingsConfigDict(env_prefix="TANDEM_", extra="ignore")

    home: Path = Field(default_factory=default_home, description="Directory for local state.")
    bind: str = Field("tcp://127.0.0.1:5555", description="ZeroMQ endpoint the worker binds (ROUTER).")
    registry_uri: str = Field("", description="MLflow tracking/registry URI; empty means sqlite in home.")
    models: str = Field(
        "ranker@champion",
        description="Comma-separated models to serve, each NAME@ALIAS or NAME/VERSION.",
    )
    device: str = Field("auto", description="'auto' (CUDA when present), 'cpu', or a torch device string.")
    max_batch_size: int = Field(256, ge=1, description="Most rows one batch may hold.")
    batch_profile_s: float = Field(
        5.0,
        ge=0,
        description="Seconds a loaded model may spend timing batches of 1, 2, 4, ... rows; its batches are then"
        " capped where rows/s falls off, once paired calls past this budget confirm it (worker/batch_profile.py)."
        " 0: no profile, batches up to max_batch_size.",
    )
    inline_compute_ms: float = Field(
        0.5,
        ge=0,
        description="Batches predicted to compute in less than this run on the event loop itself, not the"
        " inference thread (the two thread hand-offs cost more than a light model's forward pass); 0: never.",
    )
    max_queue_rows: int = Field(8192, ge=1, description="Rows queued beyond which requests are overloaded.")
    max_tensor_bytes: int = Field(64 * 1024 * 1024, ge=1, description="Largest tensor frame accepted.")
    worker_id: str = Field(
        default_factory=lambda: f"{socket.gethostname()}-{os.getpid()}",
        description="Name this worker reports to gateways.",
    )
    torch_threads: int = Field(0, ge=0, description="torch intra-op threads; 0 keeps torch's default.")
    redis_url: str = Field("", description="Redis to register in for discovery (redis://HOST:6379/0); empty: none.")
    metrics_port: int = Field(9100, ge=0, le=65535, description="Port of the worker's Prometheus metrics; 0: off.")
    trace_exporter: Literal["none", "console", "otlp"] = Field(
        "none", description="Where spans go: none (tracing off), console, or otlp (to otlp_endpoint)."
    )
    otlp_endpoint: str = Field("", description="OTLP/HTTP collector base URL, e.g. http://otel-collector:4318.")
    trace_sample_ratio: float = Field(1.0, ge=0, le=1, description="Share of new traces recorded (parent-based).")
    advertise: str = Field(
        "", description="Endpoint gateways should connect to; empty: the bound one, with this host's name."
    )
    # Model lifecycle: registry polling and hot-swap (worker/registry.py, worker/swap.py).
    poll_interval_s: float = Field(
        5.0, ge=0, description="How often the registry is polled for the served aliases' versions; 0: never."
    )
    poll_jitter_ratio: float = Field(0.2, ge=0, description="Random extra wait per poll, as a share of the interval.")
    poll_max_backoff_s: float = Field(60.0, gt=0, description="Longest wait between polls while the registry fails.")
    rejected_retry_s: float = Field(
        600.0, ge=0, description="How long a version that failed to load, warm up or check is not tried again."
    )
    swap_mode: Literal["auto", "beside", "in_place"] = Field(
        "auto",
        description="'beside': load the new version next to the live one; 'in_place': drain, unload, load; "
        "'auto': beside when a second copy fits in free memory, else in place.",
    )
    swap_headroom_ratio: float = Field(
        1.5, ge=1, description="Free memory a second copy needs, as a multiple of the model's size."
    )
    swap_drain_s: float = Field(
        1.0, ge=0, description="In-place swap: how long the worker reports not ready before unloading."
    )
    # Security (common/curve.py, common/privacy.py, docs/security.md).
    max_frame_bytes: int = Field(
        0, ge=0, description="Largest ZeroMQ frame read (a peer sending more is cut off); 0: 2 x max_tensor_bytes."
    )
    curve_server_secret_key: SecretStr = Field(
        SecretStr(""), description="Workers' CURVE secret key (Z85); set it or the file to turn CURVE on."
    )
    curve_server_secret_key_file: str = Field(
        "", description="Workers' CURVE secret certificate (server.key_secret from `tandem keys curve`)."
    )
    curve_client_keys: str = Field("", description="Comma-separated Z85 public keys of the gateways admitted.")
    curve_client_keys_dir: str = Field("", description="Directory of public *.key certificates of gateways admitted.")
    curve_allow_any_client: bool = Field(
        False, description="With CURVE on, admit any gateway's key: encryption without client authorization."
    )
    privacy_salt: SecretStr = Field(
        SecretStr(""), description="Secret key of identifier hashes in logs; the same in every process; empty: random."
    )
    log_format: Literal["json", "text"] = Field(
        "json", description="Log lines as JSON objects, one per line (common/logs.py), or as plain text."
    )

    def resolved_registry_uri(self) -> str:
        """The registry URI, defaulting to the embedded sqlite store."""
        return self.registry_uri or sqlite_registry_uri(self.home)

    def model_refs(self) -> list[str]:
        """The model references to serve."""
        return split_list(self.models)


class GatewaySettings(BaseSettings):
    """Settings of one gateway process (``tandem gateway``)."""

    model_config = SettingsConfigDict(env_prefix="TANDEM_", extra="ignore")

    home: Path = Field(default_factory=default_home, description="Directory for local state (demo features).")
    host: str = Field("127.0.0.1", description="HTTP listen address.")
    port: int = Field(8000, ge=0, le=65535, description="HTTP listen port.")
    workers: str = Field("tcp://127.0.0.1:5555", description="Comma-separated worker ZeroMQ endpoints.")
    request_timeout_ms: float = Field(1000.0, gt=0, description="Default deadline of a request.")
    max_request_timeout_ms: float = Field(30000.0, gt=0, description="Largest deadline a caller may ask for.")
    max_body_bytes: int = Field(16 * 1024 * 1024, ge=1, description="Largest request body accepted.")
    infer_fast_path: bool = Field(
        True, description="Serve V2 infer through the lean ASGI path (gateway/v2_infer.py) rather than FastAPI's."
    )
    event_loop: Literal["io-first", "asyncio", "uvloop"] = Field(
        "io-first",
        description=(
            "The gateway's event loop. io-first: asyncio's, running each turn's I/O before the task steps queued"
            " earlier, so refusals under overload are answered sooner; asyncio: asyncio's own; uvloop: accepts new"
            " connections slowly under load."
        ),
    )
    ping_interval_s: float = Field(0.2, gt=0, description="How often each worker is pinged.")
    worker_silence_s: float = Field(1.0, gt=0, description="Silence after which a worker counts as down.")
    # Tail latency (gateway/hedging.py, gateway/admission.py, gateway/discovery.py).
    hedge_models: str = Field("*", description="Models whose slow calls are hedged: '*' all, '' none, or a list.")
    hedge_delay_ms: float = Field(0.0, ge=0, description="Hedge after this long; 0: adaptively, at hedge_quantile.")
    hedge_quantile: float = Field(0.95, gt=0, lt=1, description="Latency quantile used as the adaptive hedge delay.")
    hedge_budget_ratio: float = Field(0.05, ge=0, le=1, description="Most hedges per request sent (token bucket).")
    hedge_max_queued_rows: int = Field(
        16, ge=0, description="A hedge goes only to a worker with at most this many rows queued."
    )
    max_inflight: int = Field(4096, ge=1, description="Requests one gateway process holds at once; past it 503.")
    shed_lag_share: float = Field(
        0.25,
        ge=0,
        le=1,
        description="Refuse a POST (503) while requests wait in the gateway's own queue for more than this share"
        " of their deadline (the event loop's sustained lag, or, while the loop is CPU-bound, the time the"
        " requests in flight take to finish); 0 turns it off.",
    )
    shed_lag_floor_ms: float = Field(5.0, ge=0, description="Lag below which nothing is refused for lag.")
    trace_exporter: Literal["none", "console", "otlp"] = Field(
        "none", description="Where spans go: none (tracing off), console, or otlp (to otlp_endpoint)."
    )
    otlp_endpoint: str = Field("", description="OTLP/HTTP collector base URL, e.g. http://otel-collector:4318.")
    trace_sample_ratio: float = Field(1.0, ge=0, le=1, description="Share of new traces recorded (parent-based).")
    discovery: Literal["static", "redis"] = Field(
        "static", description="'static': the workers list; 'redis': workers register in Redis."
    )
    discovery_interval_s: float = Field(0.5, gt=0, description="How often the Redis worker registry is read.")
    ranker_model: str = Field("ranker", description="Model that scores /v1/recommendations.")
    max_candidates: int = Field(1000, ge=1, description="Most candidates one recommendation may score.")
    # Features (gateway/feature_store.py, gateway/redis_features.py) and the answer when they fail.
    redis_url: str = Field(
        "", description="Redis holding the features (redis://[:PASSWORD@]HOST:6379/0); empty: in memory from home."
    )
    feature_timeout_ms: float = Field(50.0, gt=0, description="Longest one feature lookup may take.")
    feature_breaker_failures: int = Field(
        3, ge=1, description="Failed lookups in a row after which Redis is skipped (answers use defaults)."
    )
    feature_breaker_open_s: float = Field(1.0, gt=0, description="Seconds Redis is skipped before a lookup probes it.")
    feature_refresh_s: float = Field(10.0, gt=0, description="How often the product catalog is re-read from Redis.")
    redis_max_connections: int = Field(64, ge=1, description="Most connections in the gateway's Redis pool.")
    fallback_score: float = Field(
        0.01, description="Score of each candidate returned, unranked, when no features can be read."
    )
    # Business rules of /v1/recommendations (gateway/postprocess.py).
    postprocess_steps: str = Field(
        "sellable,category_cap",
        description="Post-processing steps in order, by name or module:function; per model: 'steps;model=steps'.",
    )
    max_per_category: int = Field(3, ge=0, description="Most products of one category in an answer; 0: no cap.")
    # Prediction cache (gateway/prediction_cache.py).
    cache_models: str = Field("", description="Models whose answers are cached, as NAME:TTL_S,...; empty: none.")
    cache_max_entries: int = Field(10000, ge=1, description="Most answers the prediction cache holds.")
    # Traffic splits and shadow traffic between aliases (gateway/traffic.py).
    traffic_config: str = Field(
        "", description="JSON file of per-model alias splits and shadow traffic, re-read when it changes; empty: none."
    )
    traffic_check_interval_s: float = Field(
        1.0, gt=0, description="Least time between two checks of the traffic file for a change."
    )
    shadow_max_inflight: int = Field(
        64, ge=0, description="Most shadow requests in flight at once; past it shadow copies are skipped."
    )
    # Security (gateway/auth.py, gateway/limits.py, common/curve.py, docs/security.md).
    api_keys: str = Field(
        "", description="API keys as comma-separated SHA256HEX:MODELS entries (MODELS: * or a|b); empty: no auth."
    )
    api_keys_file: str = Field("", description="JSON file of API keys with names and per-key rates; empty: none.")
    api_key_rate_per_s: float = Field(0.0, ge=0, description="Requests per second per API key; 0: unlimited.")
    api_key_burst: int = Field(0, ge=0, description="Requests a key may send at once; 0: one second's worth of rate.")
    auth_exempt_paths: str = Field(
        "/v2/health/live,/v2/health/ready,/metrics", description="Paths served without an API key, comma-separated."
    )
    max_header_bytes: int = Field(16 * 1024, ge=1024, description="Largest request line and headers; past it 431.")
    max_tensor_elements: int = Field(16 * 1024 * 1024, ge=1, description="Most elements of one V2 input tensor.")
    max_request_rows: int = Field(8192, ge=1, description="Most rows (first dimension) of one V2 infer input.")
    max_string_bytes: int = Field(1024 * 1024, ge=1, description="Longest element of a V2 BYTES input.")
    max_request_id_chars: int = Field(256, ge=1, description="Longest V2 request id.")
    curve_server_public_key: str = Field("", description="Workers' CURVE public key (Z85); set to turn CURVE on.")
    curve_server_public_key_file: str = Field(
        "", description="Workers' CURVE public certificate (server.key from `tandem keys curve`)."
    )
    curve_client_secret_key: SecretStr = Field(SecretStr(""), description="This gateway's CURVE secret key (Z85).")
    curve_client_secret_key_file: str = Field(
        "", description="This gateway's CURVE secret certificate (NAME.key_secret from `tandem keys curve`)."
    )
    privacy_salt: SecretStr = Field(
        SecretStr(""), description="Secret key of identifier hashes in logs; the same in every process; empty: random."
    )
    processes: int = Field(1, ge=1, description="Gateway processes sharing the port.")
    log_format: Literal["json", "text"] = Field(
        "json", description="Log lines as JSON objects, one per line (common/logs.py), or as plain text."
    )
    # Drift of live traffic against each model version's training reference (gateway/drift.py).
    drift_sample_rows: int = Field(
        64, ge=0, description="Most rows of one request sampled for drift monitoring; 0: drift monitoring off."
    )
    drift_sample_every: int = Field(1, ge=1, description="Sample one request in this many per model version.")
    drift_half_life_rows: float = Field(
        20000.0, gt=0, description="Sampled rows after which a row's weight in the live drift histograms halves."
    )
    drift_min_rows: int = Field(
        10000, ge=1, description="Rows sampled for a model version before its PSI is exported (fewer read noisy)."
    )

    def worker_endpoints(self) -> list[str]:
        """The worker endpoints to connect to."""
        return split_list(self.workers)
