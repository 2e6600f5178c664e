"""B1, the "basic setup": one FastAPI + uvicorn process that runs the model once per request.

Written the way the FastAPI documentation and most "serve a PyTorch model" posts do it: a pydantic model of the
V2 request body, a plain ``def`` route (FastAPI runs it in its thread pool), ``torch.tensor`` from the JSON
lists, one forward pass per request under ``torch.inference_mode()``, and the outputs back as JSON lists. No
batching, no separate model process. The model is the same registered artifact Tandem's worker loads
(``mlflow.pytorch.load_model``), and torch gets the same thread count (``--torch-threads``), so the only
differences measured are the serving architecture's.

Run: ``python -m benchmarks.baselines.naive --registry-uri URI --model ranker@champion --port 8001``.
"""

from __future__ import annotations

import argparse
import os
from typing import Any

import torch
import uvicorn
from fastapi import FastAPI
from pydantic import BaseModel

TORCH_DTYPES = {"FP32": torch.float32, "INT64": torch.int64, "INT32": torch.int32, "FP64": torch.float64}
V2_DATATYPES = {value: key for key, value in TORCH_DTYPES.items()}


class InferInput(BaseModel):
    """One V2 input tensor, its values in ``data`` (flat, row-major)."""

    name: str
    shape: list[int]
    datatype: str
    data: list[Any]


class InferRequest(BaseModel):
    """A V2 infer body."""

    id: str | None = None
    inputs: list[InferInput]


def create_app(module: torch.nn.Module, model_name: str) -> FastAPI:
    """An app serving ``module`` on ``/v2/models/{model_name}/infer``; inputs go to ``forward`` in order."""
    app = FastAPI(title="B1 naive")

    @app.post("/v2/models/{model}/infer")
    def infer(model: str, request: InferRequest) -> dict[str, Any]:
        tensors = [
            torch.tensor(each.data, dtype=TORCH_DTYPES[each.datatype]).reshape(each.shape) for each in request.inputs
        ]
        with torch.inference_mode():
            output = module(*tensors)
        return {
            "model_name": model_name,
            "id": request.id,
            "outputs": [
                {
                    "name": "output0",
                    "shape": list(output.shape),
                    "datatype": V2_DATATYPES[output.dtype],
                    "data": output.flatten().tolist(),
                }
            ],
        }

    @app.get("/v2/health/ready")
    def ready() -> dict[str, bool]:
        return {"ready": True}

    return app


def load(registry_uri: str, ref: str) -> torch.nn.Module:
    """The registered model ``NAME@ALIAS`` loaded as Tandem's worker loads it, in eval mode."""
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    import mlflow
    import mlflow.pytorch

    mlflow.set_tracking_uri(registry_uri)
    mlflow.set_registry_uri(registry_uri)
    return mlflow.pytorch.load_model(f"models:/{ref}", map_location="cpu").eval()


def main(argv: list[str] | None = None) -> int:
    """Load the model, then serve on ``--port`` until SIGTERM/SIGINT."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--registry-uri", required=True)
    parser.add_argument("--model", required=True, help="NAME@ALIAS")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--torch-threads", type=int, default=0, help="torch intra-op threads; 0: torch's default")
    args = parser.parse_args(argv)
    if args.torch_threads:
        torch.set_num_threads(args.torch_threads)
    module = load(args.registry_uri, args.model)
    app = create_app(module, args.model.split("@")[0])
    uvicorn.run(app, host=args.host, port=args.port, access_log=False, log_level="warning")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
