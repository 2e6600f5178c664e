"""Set up the running example: a synthetic yarn store in ``home/demo/`` and its models in the registry.

``bootstrap`` writes the dataset, trains the ranker on its training split (``HOLDOUT_FRACTION`` of the
interactions, ``dataset.split`` with the same seed, is held out for evaluation) and registers, each under the
alias ``champion``:

- ``ranker``: input ``features`` float32 ``(-1, NUM_FEATURES)``, output ``score`` float32 ``(-1,)``; with the
  drift reference of its training rows (columns named by ``FEATURE_NAMES``).
- ``echo``: input ``x`` float32 ``(-1, 16)``, output ``y`` float32 ``(-1, 16)`` (returns its input).
- ``sleeper``: input ``x`` float32 ``(-1, 4)``, output ``y`` float32 ``(-1,)``; sleeps 5 ms + 0.2 ms per row.

It is idempotent: when the registry already has ``ranker@champion`` and the dataset files exist, it does
nothing (unless ``force``).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np

from tandem.common.features import FEATURE_NAMES, build_training_rows
from tandem.common.settings import sqlite_registry_uri
from tandem.demo import dataset as demo_dataset
from tandem.demo.test_models import Echo, Sleeper
from tandem.demo.train import register_model, train_ranker

logger = logging.getLogger("tandem.demo")

RANKER = "ranker"
ECHO = "echo"
SLEEPER = "sleeper"
CHAMPION = "champion"

EXAMPLE_ROWS = 4  # rows in each registered input example
HOLDOUT_FRACTION = 0.2
ECHO_WIDTH = 16
SLEEPER_WIDTH = 4
SLEEPER_PER_BATCH_S = 0.005
SLEEPER_PER_ITEM_S = 0.0002


def bootstrap(home: Path, registry_uri: str | None = None, *, force: bool = False, seed: int = 7) -> str | None:
    """Create the demo dataset and models; the registered ranker version, or None if already set up."""
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    home = Path(home)
    registry_uri = registry_uri or sqlite_registry_uri(home)
    if not force and demo_dataset.exists(home) and _has_alias(registry_uri, RANKER, CHAMPION):
        logger.info("demo already set up in %s (ranker@%s exists)", home, CHAMPION)
        return None

    home.mkdir(parents=True, exist_ok=True)
    logger.info("generating the demo dataset (seed %d)", seed)
    data = demo_dataset.generate(seed=seed)
    demo_dataset.write(data, home)

    train_idx, holdout_idx = demo_dataset.split(data, HOLDOUT_FRACTION, seed=seed)
    logger.info("training the ranker on %d interactions (%d held out)", len(train_idx), len(holdout_idx))
    ranker = train_ranker(data, train_idx, seed=seed)
    example = build_training_rows(
        data.users, data.products, data.user_idx[:EXAMPLE_ROWS], data.product_idx[:EXAMPLE_ROWS]
    )
    version = register_model(
        ranker,
        registry_uri=registry_uri,
        name=RANKER,
        alias=CHAMPION,
        input_example=example,
        tags={"seed": str(seed), "holdout_fraction": str(HOLDOUT_FRACTION)},
        reference_rows=build_training_rows(
            data.users, data.products, data.user_idx[train_idx], data.product_idx[train_idx]
        ),
        reference_names=FEATURE_NAMES,
    )

    rng = np.random.default_rng(seed)
    register_model(
        Echo(),
        registry_uri=registry_uri,
        name=ECHO,
        alias=CHAMPION,
        input_example=rng.standard_normal((EXAMPLE_ROWS, ECHO_WIDTH), dtype=np.float32),
        input_name="x",
        output_name="y",
        output_shape=(-1, ECHO_WIDTH),
    )
    register_model(
        Sleeper(per_batch_s=SLEEPER_PER_BATCH_S, per_item_s=SLEEPER_PER_ITEM_S, seed=seed),
        registry_uri=registry_uri,
        name=SLEEPER,
        alias=CHAMPION,
        input_example=rng.standard_normal((EXAMPLE_ROWS, SLEEPER_WIDTH), dtype=np.float32),
        input_name="x",
        output_name="y",
        output_shape=(-1,),
    )
    logger.info("demo ready: %s version %s is @%s", RANKER, version, CHAMPION)
    return version


def _has_alias(registry_uri: str, name: str, alias: str) -> bool:
    import mlflow
    from mlflow.exceptions import MlflowException

    client = mlflow.MlflowClient(tracking_uri=registry_uri, registry_uri=registry_uri)
    try:
        client.get_model_version_by_alias(name, alias)
    except MlflowException as error:
        if error.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE", "NOT_FOUND"):
            return False
        raise
    return True
