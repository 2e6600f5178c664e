"""The command line both peer servers take (``__init__.start_peer`` passes it), run from this folder."""

from __future__ import annotations

import argparse


def parse_arguments(description: str) -> argparse.Namespace:
    """Port, pickled model file, model name, batching limits and torch threads."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--model-file", required=True)
    parser.add_argument("--model", required=True)
    parser.add_argument("--max-batch-size", type=int, default=64)
    parser.add_argument("--max-wait-ms", type=float, default=5)
    parser.add_argument("--torch-threads", type=int, default=1)
    return parser.parse_args()
