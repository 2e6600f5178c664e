"""Settings of each Tandem process, read from ``TANDEM_*`` environment variables or given explicitly.

One class per process kind. Nothing reads the environment at import time: entry points build a settings object
and pass it down. Every field names its unit.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

from pydantic import Field
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
    max_queue_rows: int = Field(8192, ge=1, description="Rows queued beyond which requests are overloaded.")
    max_tensor_bytes: int = Field(64 * 1024 * 1024, ge=1, description="Largest tensor frame accepted.")
    worker_id: str = Field(
        default_factory=lambda: f"{socket.gethostname()}-{os.getpid()}",
        description="Name this worker reports to gateways.",
    )
    torch_threads: int = Field(0, ge=0, description="torch intra-op threads; 0 keeps torch's default.")

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
    ping_interval_s: float = Field(0.2, gt=0, description="How often each worker is pinged.")
    worker_silence_s: float = Field(1.0, gt=0, description="Silence after which a worker counts as down.")
    ranker_model: str = Field("ranker", description="Model that scores /v1/recommendations.")
    max_candidates: int = Field(1000, ge=1, description="Most candidates one recommendation may score.")
    processes: int = Field(1, ge=1, description="Gateway processes sharing the port.")

    def worker_endpoints(self) -> list[str]:
        """The worker endpoints to connect to."""
        return split_list(self.workers)
