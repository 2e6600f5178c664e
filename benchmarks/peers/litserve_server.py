"""LitServe serving a ``torch.save``-d module on the V2 infer path with its dynamic batching (peer's venv only).

One API server process (FastAPI + uvicorn, parsing the JSON) and one inference worker, which LitServe feeds
batches of up to ``--max-batch-size`` requests, waiting at most ``--max-wait-ms`` for more.

Run by ``benchmarks/peers``: ``python litserve_server.py --port P --model-file F --model NAME ...``.
"""

from __future__ import annotations

import litserve as ls
import numpy as np
import torch
import v2_batch
from peer_cli import parse_arguments


class API(ls.LitAPI):
    """decode (per request) -> batch -> predict -> unbatch -> encode (per request)."""

    def __init__(self, model_file: str, model_name: str, threads: int, **kwargs) -> None:
        super().__init__(**kwargs)
        self.model_file = model_file
        self.model_name = model_name
        self.threads = threads

    def setup(self, device: str) -> None:
        torch.set_num_threads(self.threads)
        self.module = torch.load(self.model_file, weights_only=False).eval()

    def decode_request(self, request: dict) -> list[np.ndarray]:
        return v2_batch.decode(request)

    def batch(self, inputs: list[list[np.ndarray]]) -> tuple[list[np.ndarray], list[int]]:
        return v2_batch.stack(inputs), v2_batch.rows_per_request(inputs)

    def predict(self, batch: tuple[list[np.ndarray], list[int]]) -> list[np.ndarray]:
        arrays, counts = batch
        with torch.inference_mode():
            output = self.module(*[torch.from_numpy(a) for a in arrays]).numpy()
        return v2_batch.split(np.ascontiguousarray(output), counts)

    def unbatch(self, output: list[np.ndarray]) -> list[np.ndarray]:
        return output

    def encode_response(self, output: np.ndarray) -> dict:
        return v2_batch.encode(self.model_name, output)


def main() -> None:
    args = parse_arguments(__doc__.splitlines()[0])
    api = API(
        args.model_file,
        args.model,
        args.torch_threads,
        max_batch_size=args.max_batch_size,
        batch_timeout=args.max_wait_ms / 1000,
        api_path=f"/v2/models/{args.model}/infer",
    )
    server = ls.LitServer(api, accelerator="cpu", workers_per_device=1, timeout=20)
    server.run(host="127.0.0.1", port=args.port, num_api_servers=1, generate_client_file=False, log_level="warning")


if __name__ == "__main__":
    main()
