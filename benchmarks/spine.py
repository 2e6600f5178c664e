"""The spine's first benchmark: raw in-process torch against the whole stack under ``tandem up``, in one run.

Measures (1) the demo ranker called in-process by torch, one request's rows per call (batch 1) and with many
requests' rows stacked (the batching ceiling), then (2) the same work through HTTP -> gateway -> ZeroMQ ->
worker with the lean closed-loop load generator, for a V2 infer of one row and for ``/v1/recommendations``
scoring 100 candidates. Prints each figure and its ratio to the raw baseline; writes
``benchmarks/results/spine.json``.

Run: ``make bench`` (or ``python -m benchmarks.spine --duration 5``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import orjson

from benchmarks.loadgen import build_request, closed_loop
from tandem.common.features import NUM_FEATURES
from tandem.processes import child_environment, free_port, start, stop, tandem_command, wait_http_ok

RESULTS = Path(__file__).parent / "results"
CANDIDATES = 100
STACKED_REQUESTS = 64


def raw_torch(registry_uri: str, rows_per_request: int, duration_s: float) -> dict[str, float]:
    """Requests/s of the ranker called in-process: one request per call, and STACKED_REQUESTS per call."""
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    import mlflow
    import torch

    mlflow.set_tracking_uri(registry_uri)
    mlflow.set_registry_uri(registry_uri)
    module = mlflow.pytorch.load_model("models:/ranker@champion").eval()
    figures = {}
    for label, stacked in (("batch1", 1), ("stacked", STACKED_REQUESTS)):
        x = torch.randn(rows_per_request * stacked, NUM_FEATURES)
        calls = 0
        with torch.inference_mode():
            for _ in range(50):
                module(x)
            began = time.perf_counter()
            while time.perf_counter() - began < duration_s:
                module(x)
                calls += 1
            elapsed = time.perf_counter() - began
        figures[f"{label}_rps"] = round(calls * stacked / elapsed, 1)
        figures[f"{label}_call_ms"] = round(elapsed / calls * 1000, 4)
    return figures


def run_load(port: int, path: str, body: bytes, concurrency: int, duration_s: float) -> dict:
    request = build_request("127.0.0.1", port, path, body)
    result = asyncio.run(closed_loop("127.0.0.1", port, request, concurrency=concurrency, duration_s=duration_s))
    return {"concurrency": concurrency, **result.summary()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=5.0, help="seconds per measurement")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--workers", type=int, default=1)
    args = parser.parse_args(argv)

    home = Path(tempfile.mkdtemp(prefix="tandem-bench-"))
    registry_uri = f"sqlite:///{home / 'mlflow.db'}"
    port = free_port()
    up = start(
        tandem_command(
            "up", "--no-registry-server", "--home", str(home), "--port", str(port), "--workers", str(args.workers)
        ),
        env=child_environment(),
        output=open(home / "stack.log", "ab"),  # noqa: SIM115 (held by the child)
    )
    report: dict = {
        "machine": {"cpus": os.cpu_count(), "python": sys.version.split()[0], "platform": platform.platform()},
        "duration_s": args.duration,
    }
    try:
        if not wait_http_ok(f"http://127.0.0.1:{port}/v2/health/ready", 300, process=up):
            print(f"the stack did not start; see {home / 'stack.log'}", file=sys.stderr)
            return 1
        report["raw_torch"] = {
            "v2_1_row": raw_torch(registry_uri, 1, args.duration),
            f"recommend_{CANDIDATES}": raw_torch(registry_uri, CANDIDATES, args.duration),
        }
        row = np.random.default_rng(0).normal(size=(1, NUM_FEATURES)).astype(np.float32)
        v2_body = orjson.dumps(
            {"inputs": [{"name": "features", "shape": [1, NUM_FEATURES], "datatype": "FP32", "data": row.ravel()}]},
            option=orjson.OPT_SERIALIZE_NUMPY,
        )
        catalog = json.loads((home / "demo" / "products.json").read_bytes())
        rec_body = orjson.dumps(
            {"user_id": "u00042", "candidates": [p["product_id"] for p in catalog[:CANDIDATES]], "k": 10}
        )
        report["tandem"] = {"v2_1_row": [], f"recommend_{CANDIDATES}": []}
        for concurrency in args.concurrency:
            report["tandem"]["v2_1_row"].append(
                run_load(port, "/v2/models/ranker/infer", v2_body, concurrency, args.duration)
            )
            report["tandem"][f"recommend_{CANDIDATES}"].append(
                run_load(port, "/v1/recommendations", rec_body, concurrency, args.duration)
            )
    finally:
        stop(up)

    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "spine.json").write_text(json.dumps(report, indent=2))
    print_table(report)
    return 0


def print_table(report: dict) -> None:
    print(f"\nmachine: {report['machine']}")
    for workload, raw in report["raw_torch"].items():
        print(
            f"\n{workload}: raw torch {raw['batch1_rps']:.0f} req/s at batch 1, {raw['stacked_rps']:.0f} req/s stacked"
        )
        print(
            f"{'clients':>8} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'errors':>7}"
            f" {'vs raw b1':>10} {'vs stacked':>11}"
        )
        for run in report["tandem"][workload]:
            errors = run["requests"] - run["ok"]
            print(
                f"{run['concurrency']:>8} {run['throughput_rps']:>9.0f} {run['p50_ms']:>8.2f} {run['p99_ms']:>8.2f}"
                f" {errors:>7} {run['throughput_rps'] / raw['batch1_rps']:>10.3f}"
                f" {run['throughput_rps'] / raw['stacked_rps']:>11.3f}"
            )


if __name__ == "__main__":
    raise SystemExit(main())
