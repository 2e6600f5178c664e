"""The synthetic yarn store: deterministic, plausible, and round-trips through its files."""

from __future__ import annotations

import subprocess
import sys

import numpy as np

from tandem.demo import dataset

SMALL = dict(n_users=300, n_products=60, n_interactions=8000)


def _equal(a: dataset.DemoDataset, b: dataset.DemoDataset) -> bool:
    return (
        a.users == b.users
        and a.products == b.products
        and np.array_equal(a.user_idx, b.user_idx)
        and np.array_equal(a.product_idx, b.product_idx)
        and np.array_equal(a.labels, b.labels)
    )


def test_deterministic_by_seed():
    assert _equal(dataset.generate(seed=3, **SMALL), dataset.generate(seed=3, **SMALL))
    assert not _equal(dataset.generate(seed=3, **SMALL), dataset.generate(seed=4, **SMALL))


def test_default_dataset_is_plausible():
    data = dataset.generate()
    assert (len(data.users), len(data.products), len(data.labels)) == (2000, 300, 60000)
    assert data.labels.dtype == np.float32 and set(np.unique(data.labels)) <= {0.0, 1.0}
    assert 0.05 <= data.labels.mean() <= 0.15
    out_of_stock = np.array([p["stock"] == 0 for p in data.products])
    assert 0 < out_of_stock.sum() < len(data.products)
    assert data.labels[out_of_stock[data.product_idx]].sum() == 0  # nobody buys what is not there
    assert 0 < sum(p["blocked"] for p in data.products) < len(data.products) // 10
    assert len({u["user_id"] for u in data.users}) == len(data.users)
    assert data.user_idx.dtype == data.product_idx.dtype == np.int64


def test_split_is_disjoint_deterministic_and_complete():
    data = dataset.generate(**SMALL)
    train, holdout = dataset.split(data, holdout_fraction=0.25, seed=1)
    assert len(holdout) == 2000 and len(train) == 6000
    assert np.array_equal(np.sort(np.concatenate([train, holdout])), np.arange(8000))
    again_train, again_holdout = dataset.split(data, holdout_fraction=0.25, seed=1)
    assert np.array_equal(train, again_train) and np.array_equal(holdout, again_holdout)


def test_write_read_round_trip(tmp_path):
    data = dataset.generate(**SMALL)
    assert not dataset.exists(tmp_path)
    dataset.write(data, tmp_path)
    assert dataset.exists(tmp_path)
    assert _equal(dataset.read(tmp_path), data)
    users, products = dataset.read_catalog(tmp_path)
    assert users == data.users and products == data.products


def test_catalog_reading_imports_neither_torch_nor_mlflow():
    # The gateway reads the catalog and builds features; it must stay free of torch and mlflow.
    code = (
        "import sys, tandem.demo.dataset, tandem.common.features; "
        "bad = {'torch', 'mlflow'} & set(sys.modules); sys.exit(f'imported {bad}' if bad else 0)"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
