"""Train the demo ranker and register models in the MLflow Model Registry.

``train_ranker`` fits a ``Ranker`` on rows from ``build_training_rows`` (the serving feature code), seeded and
quick on a laptop CPU. ``register_model`` logs any ``torch.nn.Module`` with a tensor signature (the worker reads
input/output names, dtypes and shapes from it) and registers it as a new version, optionally under an alias.
Given ``reference_rows`` (the training rows), it also stores the version's drift reference (``drift_reference``:
the binned distribution of each input column and of the model's outputs on those rows, ``common/drift.py``)
as an extra file inside the logged model, so every worker's fetched copy carries it.

Registry URIs: an ``sqlite:///...`` store keeps artifacts in a local directory (``artifacts/`` beside the
database unless told otherwise); an ``http(s)://`` tracking server keeps them where the server says. Note that
``register_model`` sets mlflow's process-wide tracking and registry URIs: mlflow's ``log_model`` only logs to
the fluent, global, active run.
"""

from __future__ import annotations

import logging
import os
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import nn

from tandem.common.drift import REFERENCE_FILE, DriftReference, build_reference, write_reference
from tandem.common.features import build_training_rows
from tandem.demo.dataset import DemoDataset
from tandem.demo.ranker import Ranker

if TYPE_CHECKING:  # mlflow is imported where used, after telemetry is switched off.
    from mlflow import MlflowClient
    from mlflow.models.signature import ModelSignature

logger = logging.getLogger("tandem.demo")

EXPERIMENT_NAME = "tandem"
LOGGED_MODEL_NAME = "model"
SQLITE_PREFIX = "sqlite:///"
ARTIFACTS_DIR = "artifacts"
# Seconds to wait for a version to become READY (immediate for sqlite; a server may copy artifacts first).
REGISTRATION_TIMEOUT_S = 300

DEFAULT_EPOCHS = 6
BATCH_SIZE = 256
LEARNING_RATE = 3e-3
TRAINING_THREADS = 1
FLOAT32 = np.dtype(np.float32)


def train_ranker(
    dataset: DemoDataset,
    train_idx: np.ndarray | None = None,
    seed: int = 7,
    epochs: int = DEFAULT_EPOCHS,
    batch_size: int = BATCH_SIZE,
) -> Ranker:
    """A ``Ranker`` fitted (Adam, binary cross-entropy) on the interactions ``train_idx`` (default: all).

    Deterministic for a seed on a given machine and torch build. Returns the model in eval mode.
    """
    if train_idx is None:
        train_idx = np.arange(len(dataset.labels))
    rows = build_training_rows(
        dataset.users, dataset.products, dataset.user_idx[train_idx], dataset.product_idx[train_idx]
    )
    features = torch.from_numpy(rows)
    labels = torch.from_numpy(np.ascontiguousarray(dataset.labels[train_idx], dtype=np.float32))

    torch.manual_seed(seed)
    shuffle = torch.Generator().manual_seed(seed)
    model = Ranker()
    optimizer = torch.optim.Adam(model.parameters(), lr=LEARNING_RATE)
    loss_fn = nn.BCEWithLogitsLoss()
    threads = torch.get_num_threads()
    # One thread: these ops are too small to gain from more, and when another process holds a core, torch's
    # spinning thread pool made this 30x slower (1.6 s -> 50 s on 2 busy cores). It also fixes the
    # reduction order, so a seed gives the same model wherever the core count differs.
    torch.set_num_threads(TRAINING_THREADS)
    try:
        model.train()
        for _ in range(epochs):
            order = torch.randperm(len(labels), generator=shuffle)
            for start in range(0, len(order), batch_size):
                batch = order[start : start + batch_size]
                optimizer.zero_grad()
                loss = loss_fn(model.logits(features[batch]), labels[batch])
                loss.backward()
                optimizer.step()
    finally:
        torch.set_num_threads(threads)
    model.eval()
    return model


def tensor_signature(
    input_name: str,
    input_shape: Sequence[int],
    output_name: str,
    output_shape: Sequence[int],
    dtype: np.dtype = FLOAT32,
) -> ModelSignature:
    """A tensor-based MLflow signature with one named input and one named output."""
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    from mlflow.models.signature import ModelSignature
    from mlflow.types.schema import Schema, TensorSpec

    return ModelSignature(
        inputs=Schema([TensorSpec(np.dtype(dtype), tuple(input_shape), name=input_name)]),
        outputs=Schema([TensorSpec(np.dtype(dtype), tuple(output_shape), name=output_name)]),
    )


def register_model(
    module: nn.Module,
    *,
    registry_uri: str,
    name: str,
    alias: str | None,
    input_example: np.ndarray,
    input_name: str = "features",
    output_name: str = "score",
    output_shape: Sequence[int] = (-1,),
    artifacts_dir: Path | None = None,
    tags: dict[str, str] | None = None,
    reference_rows: np.ndarray | None = None,
    reference_names: Sequence[str] | None = None,
) -> str:
    """Log ``module`` (pickled) and register it as a new version of ``name``; returns the version, e.g. "3".

    The signature's input is ``input_name``, float32, shape ``(-1, *input_example.shape[1:])``; its output is
    ``output_name``, float32, ``output_shape``. ``alias`` (if given) moves to the new version; ``tags`` become
    model version tags. ``artifacts_dir`` only matters for an sqlite registry whose ``tandem`` experiment does
    not exist yet. ``reference_rows`` (training rows of the input) adds the drift reference; ``reference_names``
    names the input's columns in it.
    """
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    import mlflow
    import mlflow.pytorch

    started = time.perf_counter()
    example = np.ascontiguousarray(input_example, dtype=np.float32)
    signature = tensor_signature(input_name, (-1, *example.shape[1:]), output_name, output_shape)

    mlflow.set_tracking_uri(registry_uri)
    mlflow.set_registry_uri(registry_uri)
    client = mlflow.MlflowClient(tracking_uri=registry_uri, registry_uri=registry_uri)
    experiment_id = _ensure_experiment(client, registry_uri, artifacts_dir)

    with (
        tempfile.TemporaryDirectory(prefix="tandem-register-") as scratch,
        mlflow.start_run(experiment_id=experiment_id, run_name=f"register-{name}") as run,
        _known_noise_muted(),
    ):
        extra_files = None
        if reference_rows is not None:
            reference = drift_reference(
                module, reference_rows, input_name=input_name, output_name=output_name, names=reference_names
            )
            extra_files = [str(write_reference(reference, Path(scratch) / REFERENCE_FILE))]
        info = mlflow.pytorch.log_model(
            module,
            name=LOGGED_MODEL_NAME,
            serialization_format="pickle",
            signature=signature,
            input_example=example,
            # Explicit requirements skip mlflow's inference, which re-loads the model in a subprocess:
            # 2.8 s against 0.06 s per model. The worker runs in Tandem's own environment anyway.
            pip_requirements=[f"torch=={torch.__version__}", f"mlflow=={mlflow.__version__}"],
            extra_files=extra_files,
        )

    _ensure_registered_model(client, name)
    version = client.create_model_version(
        name=name,
        source=info.model_uri,
        run_id=run.info.run_id,
        tags=tags,
        await_creation_for=REGISTRATION_TIMEOUT_S,
        model_id=info.model_id,
    )
    if alias is not None:
        client.set_registered_model_alias(name, alias, version.version)
    logger.info(
        "registered %s version %s%s in %.2fs",
        name,
        version.version,
        f" as @{alias}" if alias else "",
        time.perf_counter() - started,
    )
    return str(version.version)


def drift_reference(
    module: nn.Module,
    rows: np.ndarray,
    *,
    input_name: str = "features",
    output_name: str = "score",
    names: Sequence[str] | None = None,
) -> DriftReference:
    """The binned distribution of ``rows`` (one input) and of ``module``'s output on them, for drift monitoring."""
    rows = np.ascontiguousarray(rows, dtype=np.float32)
    with torch.inference_mode():
        outputs = module(torch.from_numpy(rows)).float().cpu().numpy()
    return build_reference({input_name: rows}, {output_name: outputs}, {input_name: names} if names else None)


@contextmanager
def _known_noise_muted() -> Iterator[None]:
    """Mute two warnings ``log_model`` prints for every model Tandem logs, both expected.

    - ``mlflow.pytorch`` warns that pickle can run code on load: a chosen trade-off (the safe ``pt2`` export
      loads 3.5x slower for the ranker), and registry write access is already code execution on workers.
    - ``mlflow.models.model`` reports that the input example fails serving validation: MLflow's *pyfunc*
      wrapper cannot take named-tensor inputs. Tandem's worker loads with ``mlflow.pytorch`` and never uses
      pyfunc; the integration tests check that the logged models load and score.
    """
    muted = [logging.getLogger(name) for name in ("mlflow.pytorch", "mlflow.models.model")]
    levels = [each.level for each in muted]
    for each in muted:
        each.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for each, level in zip(muted, levels, strict=True):
            each.setLevel(level)


def _ensure_experiment(client: MlflowClient, registry_uri: str, artifacts_dir: Path | None) -> str:
    """The id of the ``tandem`` experiment, created (with local artifacts for sqlite) if missing."""
    from mlflow.exceptions import MlflowException

    experiment = client.get_experiment_by_name(EXPERIMENT_NAME)
    if experiment is not None:
        return experiment.experiment_id
    artifact_location = None
    if registry_uri.startswith(SQLITE_PREFIX):
        database = Path(registry_uri[len(SQLITE_PREFIX) :])
        artifact_location = Path(artifacts_dir or database.parent / ARTIFACTS_DIR).resolve().as_uri()
    try:
        return client.create_experiment(EXPERIMENT_NAME, artifact_location=artifact_location)
    except MlflowException:
        # Another process created it between our lookup and create; theirs is as good as ours.
        experiment = client.get_experiment_by_name(EXPERIMENT_NAME)
        if experiment is None:
            raise
        return experiment.experiment_id


def _ensure_registered_model(client: MlflowClient, name: str) -> None:
    from mlflow.exceptions import MlflowException

    try:
        client.create_registered_model(name)
    except MlflowException as error:
        if error.error_code != "RESOURCE_ALREADY_EXISTS":
            raise
