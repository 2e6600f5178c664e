"""Latency during a hot swap against steady state, in one run: a gateway and a worker under closed-loop load.

A sqlite registry holds two versions of ``Scale`` (a model carrying ``--model-mb`` of parameters, so loading a
version costs what loading a real model of that size costs: reading, unpickling, copying). One worker serves
``scale@champion``, polling every ``--poll-s``; one gateway is in front. Closed-loop callers send V2 infers of
one row the whole time. First a steady window; then ``--swaps`` promotions (``tandem models promote``), the alias
alternating between the two versions, each waited for (the worker's pong names the new version) and followed by a
quiet pause. Each request is timed from its send to its answer and classed by when it was sent:

- ``steady``: in the steady window, before any swap;
- ``swap``: between a promotion and the pong that shows it done (poll wait + fetch + load + warm-up + promote);
- requests in the pauses after each swap are not counted in either class.

Prints p50/p99/p99.9 and errors per class and the swap durations; writes ``benchmarks/results/hot_swap.json``.

Run: ``python -m benchmarks.hot_swap`` (``--help`` for the knobs).
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
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import orjson
import zmq
import zmq.asyncio

from benchmarks.loadgen import Connection, build_request
from tandem.common.wire import Ping, Pong, decode, encode
from tandem.processes import child_environment, free_port, start, stop, tandem_command, wait_http_ok

RESULTS = Path(__file__).parent / "results"
MODEL = "scale"
ALIAS = "champion"
WIDTH = 4
MIB = 1024 * 1024
PONG_POLL_S = 0.02
PING_TIMEOUT_S = 1.0
READY_TIMEOUT_S = 120.0
SWAP_TIMEOUT_S = 60.0
HOST = "127.0.0.1"


@dataclass(slots=True)
class Timed:
    sent_at: float
    latency_s: float
    status: int


def register_versions(registry_uri: str, model_mb: int) -> list[str]:
    """Two versions of ``Scale`` (factors 1 and 2) of ``model_mb`` MiB each; the first is @champion."""
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    from tandem.demo.test_models import Scale
    from tandem.demo.train import register_model

    example = np.ones((2, WIDTH), np.float32)
    return [
        register_model(
            Scale(factor, ballast_bytes=model_mb * MIB),
            registry_uri=registry_uri,
            name=MODEL,
            alias=ALIAS if factor == 1.0 else None,
            input_example=example,
            input_name="x",
            output_name="y",
            output_shape=(-1, WIDTH),
        )
        for factor in (1.0, 2.0)
    ]


async def live_version(socket: zmq.asyncio.Socket) -> str | None:
    """The version the worker serves ``scale@champion`` with, per its pong."""
    await socket.send_multipart(encode(Ping(1)))
    if not await socket.poll(int(PING_TIMEOUT_S * 1000)):
        return None
    pong = decode(await socket.recv_multipart())
    if not isinstance(pong, Pong):
        return None
    return next((str(m["version"]) for m in pong.models if m["name"] == MODEL and ALIAS in m["aliases"]), None)


async def closed_loop(port: int, request: bytes, concurrency: int, stop_event: asyncio.Event) -> list[Timed]:
    """``concurrency`` callers sending ``request`` back to back until ``stop_event``; every request timed."""
    timed: list[Timed] = []

    async def caller() -> None:
        connection = await Connection.open(HOST, port)
        try:
            while not stop_event.is_set():
                sent_at = time.perf_counter()
                try:
                    status = await connection.roundtrip(request)
                except (OSError, asyncio.IncompleteReadError):
                    status = 0
                    connection.close()
                    connection = await Connection.open(HOST, port)
                timed.append(Timed(sent_at, time.perf_counter() - sent_at, status))
        finally:
            connection.close()

    await asyncio.gather(*(caller() for _ in range(concurrency)))
    return timed


def summary(timed: list[Timed]) -> dict[str, float | int]:
    """Request count, errors and latency percentiles (ms) of ``timed``."""
    latencies = np.array([t.latency_s for t in timed if t.status == 200]) * 1000
    figures: dict[str, float | int] = {"requests": len(timed), "errors": sum(t.status != 200 for t in timed)}
    for label, q in (("p50_ms", 50), ("p99_ms", 99), ("p999_ms", 99.9), ("max_ms", 100)):
        figures[label] = round(float(np.percentile(latencies, q)), 3) if latencies.size else float("nan")
    return figures


PROMOTER = """
import sys
from tandem.models_cli import promote
for line in sys.stdin:
    uri, name, version, alias = line.split()
    promote(uri, name, version, alias)
    print("done", flush=True)
"""


class Promoter:
    """``tandem models promote`` in a child process kept warm, so registry writes do not share the load
    generator's interpreter (its GIL would delay the callers and inflate the swap window's latencies)."""

    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self.process = process

    @classmethod
    async def start(cls) -> Promoter:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            PROMOTER,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            env=child_environment(),
        )
        return cls(process)

    async def promote(self, registry_uri: str, version: str) -> None:
        """Point ``scale@champion`` at ``version``."""
        if self.process.stdin is None or self.process.stdout is None:
            raise RuntimeError("the promoter has no pipes")
        self.process.stdin.write(f"{registry_uri} {MODEL} {version} {ALIAS}\n".encode())
        await self.process.stdin.drain()
        if (await self.process.stdout.readline()).strip() != b"done":
            raise RuntimeError("the promoter failed")

    async def close(self) -> None:
        if self.process.stdin is not None:
            self.process.stdin.close()
        await self.process.wait()


async def measure(args: argparse.Namespace, port: int, worker: str, registry_uri: str, versions: list[str]) -> dict:
    promoter = await Promoter.start()
    await promoter.promote(registry_uri, versions[0])  # warm: imports mlflow, opens the store; a no-op swap
    body = orjson.dumps(
        {"inputs": [{"name": "x", "shape": [1, WIDTH], "datatype": "FP32", "data": [1.0, 2.0, 3.0, 4.0]}]}
    )
    request = build_request(HOST, port, f"/v2/models/{MODEL}/infer", body)
    context = zmq.asyncio.Context()
    socket = context.socket(zmq.DEALER)
    socket.setsockopt(zmq.LINGER, 0)
    socket.connect(worker)
    stop_event = asyncio.Event()
    load = asyncio.create_task(closed_loop(port, request, args.concurrency, stop_event))
    windows: list[tuple[float, float]] = []
    try:
        await asyncio.sleep(args.warmup)
        steady = (time.perf_counter(), time.perf_counter() + args.duration)
        await asyncio.sleep(args.duration)
        for swap in range(args.swaps):
            target = versions[(swap + 1) % 2]
            began = time.perf_counter()
            await promoter.promote(registry_uri, target)
            deadline = began + SWAP_TIMEOUT_S
            while await live_version(socket) != target:
                if time.perf_counter() > deadline:
                    raise TimeoutError(f"the worker did not swap to version {target}")
                await asyncio.sleep(PONG_POLL_S)
            windows.append((began, time.perf_counter()))
            await asyncio.sleep(args.pause)
    finally:
        stop_event.set()
        timed = await load
        socket.close(linger=0)
        context.term()
        await promoter.close()
    in_steady = [t for t in timed if steady[0] <= t.sent_at < steady[1]]
    in_swap = [t for t in timed if any(a <= t.sent_at < b for a, b in windows)]
    return {
        "steady": summary(in_steady),
        "swap": summary(in_swap),
        "all_errors": sum(t.status != 200 for t in timed),
        "swap_durations_s": [round(b - a, 3) for a, b in windows],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-mb", type=int, default=100, help="size of each version's parameters, MiB")
    parser.add_argument("--concurrency", type=int, default=8, help="closed-loop callers")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds of steady state measured")
    parser.add_argument("--swaps", type=int, default=6, help="promotions measured")
    parser.add_argument("--pause", type=float, default=1.0, help="seconds of load after each swap, not measured")
    parser.add_argument("--warmup", type=float, default=2.0, help="seconds of load before measuring")
    parser.add_argument("--poll-s", type=float, default=0.2, help="the worker's registry poll interval")
    parser.add_argument("--device", default="auto", help="the worker's device")
    args = parser.parse_args(argv)

    home = Path(tempfile.mkdtemp(prefix="tandem-hot-swap-"))
    registry_uri = f"sqlite:///{home / 'mlflow.db'}"
    print(f"registering two {args.model_mb} MiB versions in {registry_uri}", file=sys.stderr)
    versions = register_versions(registry_uri, args.model_mb)
    worker = f"tcp://{HOST}:{free_port()}"
    port = free_port()
    env = child_environment({"TANDEM_POLL_INTERVAL_S": str(args.poll_s), "TANDEM_HOME": str(home)})
    processes = []
    try:
        processes.append(
            start(
                tandem_command(
                    "worker",
                    "--registry-uri",
                    registry_uri,
                    "--bind",
                    worker,
                    "--models",
                    f"{MODEL}@{ALIAS}",
                    "--device",
                    args.device,
                ),
                env=env,
                output=open(home / "worker.log", "ab"),  # noqa: SIM115 (held by the child)
            )
        )
        processes.append(
            start(
                tandem_command("gateway", "--port", str(port), "--workers", worker),
                env=env,
                output=open(home / "gateway.log", "ab"),  # noqa: SIM115 (held by the child)
            )
        )
        if not wait_http_ok(f"http://{HOST}:{port}/v2/health/ready", READY_TIMEOUT_S, process=processes[1]):
            print(f"the stack did not start; see {home}", file=sys.stderr)
            return 1
        figures = asyncio.run(measure(args, port, worker, registry_uri, versions))
    finally:
        for process in processes:
            stop(process)
    report = {
        "machine": {"cpus": os.cpu_count(), "python": sys.version.split()[0], "platform": platform.platform()},
        "settings": vars(args),
        **figures,
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "hot_swap.json").write_text(json.dumps(report, indent=2))
    print_table(report)
    print(f"logs in {home}", file=sys.stderr)
    return 0


def print_table(report: dict) -> None:
    """The figures as a small table."""
    settings = report["settings"]
    print(
        f"\nhot swap of a {settings['model_mb']} MiB model, {settings['concurrency']} closed-loop callers, "
        f"machine {report['machine']['cpus']} CPUs"
    )
    print(f"{'window':>8} {'requests':>9} {'errors':>7} {'p50 ms':>8} {'p99 ms':>8} {'p99.9 ms':>9} {'max ms':>8}")
    for window in ("steady", "swap"):
        f = report[window]
        print(
            f"{window:>8} {f['requests']:>9} {f['errors']:>7} {f['p50_ms']:>8.2f} {f['p99_ms']:>8.2f}"
            f" {f['p999_ms']:>9.2f} {f['max_ms']:>8.2f}"
        )
    durations = report["swap_durations_s"]
    print(
        f"swaps: {len(durations)}, promote -> live took {durations} s; errors in the whole run: {report['all_errors']}"
    )


if __name__ == "__main__":
    raise SystemExit(main())
