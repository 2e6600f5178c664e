"""V2 JSON bodies to batched numpy arrays and back, for the peers' servers (numpy only: runs in their venvs).

``decode`` turns one parsed V2 infer body into its input arrays (in request order); ``stack`` concatenates many
requests' arrays per input along the batch dimension; ``encode`` turns one request's rows of the output back
into a V2 response body. The same work Tandem's gateway and worker do, written plainly.
"""

from __future__ import annotations

from typing import Any

import numpy as np

NUMPY_DTYPES = {"FP32": np.float32, "INT64": np.int64, "INT32": np.int32, "FP64": np.float64}
V2_DATATYPES = {np.dtype(v): k for k, v in NUMPY_DTYPES.items()}


def decode(body: dict[str, Any]) -> list[np.ndarray]:
    """The input arrays of one V2 infer body."""
    return [
        np.asarray(each["data"], dtype=NUMPY_DTYPES[each["datatype"]]).reshape(each["shape"]) for each in body["inputs"]
    ]


def stack(requests: list[list[np.ndarray]]) -> list[np.ndarray]:
    """Per input, every request's rows concatenated in request order."""
    return [np.concatenate(parts) for parts in zip(*requests, strict=True)]


def rows_per_request(requests: list[list[np.ndarray]]) -> list[int]:
    return [arrays[0].shape[0] for arrays in requests]


def split(output: np.ndarray, counts: list[int]) -> list[np.ndarray]:
    """``output``'s rows split back into each request's share."""
    return np.split(output, np.cumsum(counts)[:-1])


def encode(model: str, rows: np.ndarray) -> dict[str, Any]:
    """A V2 infer response body holding ``rows`` as the output ``output0``."""
    return {
        "model_name": model,
        "outputs": [
            {
                "name": "output0",
                "shape": list(rows.shape),
                "datatype": V2_DATATYPES[rows.dtype],
                "data": rows.ravel().tolist(),
            }
        ],
    }
