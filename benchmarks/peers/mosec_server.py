"""Mosec serving a ``torch.save``-d module on the V2 infer path with its dynamic batching (peer's venv only).

One Mosec worker process runs the model; Mosec's Rust front end takes HTTP and forms the batches (up to
``--max-batch-size`` requests, waiting at most ``--max-wait-ms`` for more). Bodies are parsed in the worker with
Mosec's default JSON (de)serialisation, then ``v2_batch`` does what Tandem does with the tensors.

Run by ``benchmarks/peers``: ``python mosec_server.py --port P --model-file F --model NAME ...``.
"""

from __future__ import annotations

import os
import sys

import numpy as np
import torch
import v2_batch
from mosec import Server, Worker
from peer_cli import parse_arguments

MODEL_FILE_ENV = "PEER_MODEL_FILE"
MODEL_NAME_ENV = "PEER_MODEL_NAME"
THREADS_ENV = "PEER_TORCH_THREADS"


class Model(Worker):
    """Runs one batch of V2 requests through the module per ``forward``."""

    def __init__(self) -> None:
        super().__init__()
        torch.set_num_threads(int(os.environ[THREADS_ENV]))
        self.model_name = os.environ[MODEL_NAME_ENV]
        self.module = torch.load(os.environ[MODEL_FILE_ENV], weights_only=False).eval()

    def forward(self, data: list[dict]) -> list[dict]:
        requests = [v2_batch.decode(body) for body in data]
        inputs = [torch.from_numpy(a) for a in v2_batch.stack(requests)]
        with torch.inference_mode():
            output = self.module(*inputs).numpy()
        parts = v2_batch.split(np.ascontiguousarray(output), v2_batch.rows_per_request(requests))
        return [v2_batch.encode(self.model_name, part) for part in parts]


def main() -> None:
    args = parse_arguments(__doc__.splitlines()[0])
    os.environ[MODEL_FILE_ENV] = args.model_file
    os.environ[MODEL_NAME_ENV] = args.model
    os.environ[THREADS_ENV] = str(args.torch_threads)
    # Mosec reads its own flags from argv: hand it only those.
    sys.argv = [
        sys.argv[0],
        "--port",
        str(args.port),
        "--address",
        "127.0.0.1",
        "--timeout",
        "20000",
        "--log-level",
        "warning",
    ]
    server = Server()
    server.append_worker(
        Model,
        num=1,
        max_batch_size=args.max_batch_size,
        max_wait_time=max(1, round(args.max_wait_ms)),
        route=f"/v2/models/{args.model}/infer",
    )
    server.run()


if __name__ == "__main__":
    main()
