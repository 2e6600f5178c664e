"""The demo bootstrap against a real sqlite MLflow registry: models register, load, score and rank."""

from __future__ import annotations

import os
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
import torch

from tandem.common.features import NUM_FEATURES, build_training_rows
from tandem.common.settings import sqlite_registry_uri
from tandem.demo import dataset
from tandem.demo.bootstrap import bootstrap
from tandem.demo.train import train_ranker

MIN_HOLDOUT_AUC = 0.65  # random ranking scores 0.5; the hidden model allows about 0.8


@pytest.fixture(scope="module")
def mlflow() -> ModuleType:
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    import mlflow
    import mlflow.pytorch

    return mlflow


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory, mlflow: ModuleType) -> Path:
    home = tmp_path_factory.mktemp("home")
    assert bootstrap(home) == "1"  # default registry: sqlite inside home
    mlflow.set_tracking_uri(sqlite_registry_uri(home))
    mlflow.set_registry_uri(sqlite_registry_uri(home))
    return home


def _auc(scores: np.ndarray, labels: np.ndarray) -> float:
    """Area under the ROC curve: the Mann-Whitney statistic, ties counted half."""
    _, inverse, counts = np.unique(scores, return_inverse=True, return_counts=True)
    ends = np.cumsum(counts)
    ranks = (ends - (counts - 1) / 2.0)[inverse]  # average 1-based rank of each tie group
    positives = labels == 1
    n_pos, n_neg = positives.sum(), (~positives).sum()
    return float((ranks[positives].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def test_auc_helper():
    assert _auc(np.array([0.1, 0.2, 0.3, 0.4]), np.array([0, 0, 1, 1])) == 1.0
    assert _auc(np.array([0.5, 0.5, 0.5, 0.5]), np.array([0, 1, 0, 1])) == 0.5


def test_writes_dataset_and_local_artifacts(home: Path):
    assert dataset.exists(home)
    assert (home / "mlflow.db").is_file()
    assert any((home / "artifacts").rglob("MLmodel"))


def test_registered_ranker_scores_like_the_trained_one(home: Path, mlflow: ModuleType):
    loaded = mlflow.pytorch.load_model("models:/ranker@champion")
    data = dataset.read(home)
    rows = torch.from_numpy(build_training_rows(data.users, data.products, data.user_idx[:500], data.product_idx[:500]))
    expected = train_ranker(data, dataset.split(data, holdout_fraction=0.2, seed=7)[0], seed=7)  # deterministic
    with torch.no_grad():
        got, want = loaded(rows), expected(rows)
    assert got.dtype == torch.float32 and got.shape == (500,)
    assert torch.allclose(got, want, atol=1e-6)


def test_signatures_and_aliases(home: Path, mlflow: ModuleType):
    expected = {
        "ranker": (("features", (-1, NUM_FEATURES)), ("score", (-1,))),
        "echo": (("x", (-1, 16)), ("y", (-1, 16))),
        "sleeper": (("x", (-1, 4)), ("y", (-1,))),
    }
    client = mlflow.MlflowClient()  # sqlite gives versions as int, a server as str: compare as str
    for name, ((input_name, input_shape), (output_name, output_shape)) in expected.items():
        assert str(client.get_model_version_by_alias(name, "champion").version) == "1"
        signature = mlflow.models.get_model_info(f"models:/{name}@champion").signature
        assert signature.inputs.is_tensor_spec() and signature.outputs.is_tensor_spec()
        (spec_in,), (spec_out,) = signature.inputs.inputs, signature.outputs.inputs
        assert (spec_in.name, spec_in.type, spec_in.shape) == (input_name, np.dtype(np.float32), input_shape)
        assert (spec_out.name, spec_out.type, spec_out.shape) == (output_name, np.dtype(np.float32), output_shape)


def test_test_models_load_and_run(home: Path, mlflow: ModuleType):
    x = torch.randn(3, 16)
    echo = mlflow.pytorch.load_model("models:/echo@champion")
    assert torch.equal(echo(x), x)
    sleeper = mlflow.pytorch.load_model("models:/sleeper@champion")
    assert (sleeper.per_batch_s, sleeper.per_item_s, sleeper.stall_probability) == (0.005, 0.0002, 0.0)
    assert torch.allclose(sleeper(x[:, :4]), x[:, :4].sum(dim=1))


def test_ranker_beats_random_on_held_out_interactions(home: Path):
    data = dataset.read(home)
    train_idx, holdout_idx = dataset.split(data, holdout_fraction=0.2, seed=7)
    model = train_ranker(data, train_idx, seed=7)
    rows = build_training_rows(data.users, data.products, data.user_idx[holdout_idx], data.product_idx[holdout_idx])
    with torch.no_grad():
        scores = model(torch.from_numpy(rows)).numpy()
    assert _auc(scores, data.labels[holdout_idx]) > MIN_HOLDOUT_AUC


def test_bootstrap_is_idempotent_unless_forced(home: Path, mlflow: ModuleType):
    assert bootstrap(home) is None
    assert bootstrap(home, force=True) == "2"
    assert str(mlflow.MlflowClient().get_model_version_by_alias("ranker", "champion").version) == "2"
