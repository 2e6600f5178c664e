"""A real MLflow registry (sqlite + local artifacts) in a test directory, and tiny models registered in it."""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

import mlflow
from mlflow.models import ModelSignature
from mlflow.types import Schema, TensorSpec

EXPERIMENT = "tandem-tests"
ARTIFACT_PATH = "model"
TensorDecl = tuple[np.dtype, tuple[int, ...]]


@dataclass(frozen=True)
class Registry:
    """An MLflow tracking + registry store: ``uri`` is what workers get as ``TANDEM_REGISTRY_URI``."""

    uri: str
    experiment_id: str
    root: Path


def create_registry(root: Path) -> Registry:
    """A fresh sqlite registry in ``root`` with artifacts under ``root/artifacts``."""
    root.mkdir(parents=True, exist_ok=True)
    uri = f"sqlite:///{(root / 'mlflow.db').resolve()}"
    client = mlflow.MlflowClient(tracking_uri=uri, registry_uri=uri)
    experiment_id = client.create_experiment(EXPERIMENT, artifact_location=(root / "artifacts").resolve().as_uri())
    return Registry(uri, experiment_id, root)


def tensor_signature(inputs: Mapping[str, TensorDecl], outputs: Mapping[str, TensorDecl]) -> ModelSignature:
    """A tensor-based signature from ``{name: (numpy dtype, shape with -1 for variable dims)}``."""

    def schema(decls: Mapping[str, TensorDecl]) -> Schema:
        return Schema([TensorSpec(np.dtype(dtype), shape, name) for name, (dtype, shape) in decls.items()])

    return ModelSignature(inputs=schema(inputs), outputs=schema(outputs))


@contextmanager
def _using(uri: str) -> Iterator[None]:
    tracking, registry = mlflow.get_tracking_uri(), mlflow.get_registry_uri()
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    try:
        yield
    finally:
        mlflow.set_tracking_uri(tracking)
        mlflow.set_registry_uri(registry)


def register_model(
    registry: Registry,
    name: str,
    module: torch.nn.Module,
    *,
    signature: ModelSignature,
    input_example: object | None = None,
    aliases: Sequence[str] = ("champion",),
) -> str:
    """Log ``module`` (pickle format) in a new run, register it as a new version of ``name``, set ``aliases``.

    Returns the new version.
    """
    # Imported here: importing mlflow.pytorch calls logging.basicConfig(level=ERROR) on the root logger.
    import mlflow.pytorch

    with _using(registry.uri), mlflow.start_run(experiment_id=registry.experiment_id):
        info = mlflow.pytorch.log_model(
            module,
            name=ARTIFACT_PATH,
            serialization_format="pickle",
            signature=signature,
            input_example=input_example,
            pip_requirements=["torch"],  # skips requirement inference, which takes seconds
        )
        version = str(mlflow.register_model(info.model_uri, name).version)
    client = mlflow.MlflowClient(tracking_uri=registry.uri, registry_uri=registry.uri)
    for alias in aliases:
        client.set_registered_model_alias(name, alias, version)
    return version


TINY_INPUT = "x"
TINY_OUTPUT = "y"
TINY_FEATURES = 4
TINY_CLASSES = 2


@dataclass
class TinyModel:
    """A registered ``nn.Linear(4, 2)``: input ``x`` FP32 [-1, 4], output ``y`` FP32 [-1, 2]."""

    registry: Registry
    name: str
    version: str
    alias: str
    module: torch.nn.Module

    @property
    def ref(self) -> str:
        """The reference a worker is configured with (``NAME@ALIAS``)."""
        return f"{self.name}@{self.alias}"

    def expected(self, x: np.ndarray) -> np.ndarray:
        """What the model computes for ``x``."""
        with torch.inference_mode():
            return self.module(torch.from_numpy(np.ascontiguousarray(x))).numpy()


def tiny_linear(seed: int = 0) -> torch.nn.Module:
    """A deterministic ``nn.Linear(4, 2)``."""
    torch.manual_seed(seed)
    return torch.nn.Linear(TINY_FEATURES, TINY_CLASSES).eval()


def register_tiny(registry: Registry, name: str = "tiny", alias: str = "champion", seed: int = 0) -> TinyModel:
    """Register a new version of the tiny model under ``name`` and point ``alias`` at it."""
    module = tiny_linear(seed)
    signature = tensor_signature(
        {TINY_INPUT: (np.dtype(np.float32), (-1, TINY_FEATURES))},
        {TINY_OUTPUT: (np.dtype(np.float32), (-1, TINY_CLASSES))},
    )
    example = np.linspace(-1, 1, 2 * TINY_FEATURES, dtype=np.float32).reshape(2, TINY_FEATURES)
    version = register_model(registry, name, module, signature=signature, input_example=example, aliases=[alias])
    return TinyModel(registry, name, version, alias, module)
