"""Pytest fixtures shared by every test directory (registered by ``tests/conftest.py``)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from tests.support.registry import TinyModel


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> TinyModel:
    """A fresh sqlite MLflow registry holding ``tiny`` version 1 (``nn.Linear(4, 2)``) aliased ``champion``."""
    # Imported here so test sessions that never use a registry do not pay for importing mlflow.
    from tests.support.registry import create_registry, register_tiny

    return register_tiny(create_registry(tmp_path_factory.mktemp("registry")))
