"""Feature lookup's share of ``/v1/recommendations`` latency with 100 candidates: Redis against in memory.

One run sets up, in a temporary home: the demo models and catalog (``tandem models bootstrap``), a redis-server
on a free port filled by ``tandem features load``, one worker, and two gateways in front of that worker, one
reading features from Redis (``TANDEM_REDIS_URL``), one from memory. Then it measures:

1. the lookup as the gateway makes it, in this process: ``RedisFeatureStore.lookup`` (one ``MGET`` of the user
   and 100 product blobs, decoded) and ``InMemoryFeatureStore.lookup``, one call at a time; and, for the layout
   decision, the same 101 entities as one hash each read with a pipeline of ``HGETALL`` (decoded to strings
   only, so a lower bound on that layout's cost);
2. end-to-end latency through each gateway with the closed-loop load generator (1 and 8 clients);

and prints lookup p50/p99, end-to-end p50/p99 and the lookup's share of the end-to-end median. Figures go to
``benchmarks/results/feature_lookup.json``. Needs ``redis-server`` on PATH (``make install-test``).

Run: ``python -m benchmarks.feature_lookup [--duration 5] [--lookups 3000]``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import redis
import redis.asyncio as aioredis

from benchmarks.loadgen import build_request, closed_loop
from tandem.common.settings import GatewaySettings, sqlite_registry_uri
from tandem.demo.dataset import read_catalog
from tandem.gateway.feature_store import InMemoryFeatureStore
from tandem.gateway.redis_features import RedisFeatureStore
from tandem.processes import child_environment, free_port, start, stop, tandem_command, wait_http_ok

RESULTS = Path(__file__).parent / "results"
CANDIDATES = 100
K = 10
LOCALHOST = "127.0.0.1"
READY_TIMEOUT_S = 180.0
WARMUP_CALLS = 200
HASH_PREFIX = "bench:hash"
# Generous: this measures how long lookups take, not what happens when one is cut short.
LOOKUP_TIMEOUT_MS = 1000.0


def percentiles_ms(seconds: list[float]) -> dict[str, float]:
    """p50, p99 and mean of ``seconds``, in milliseconds."""
    values = np.asarray(seconds) * 1000
    return {
        "p50_ms": round(float(np.percentile(values, 50)), 4),
        "p99_ms": round(float(np.percentile(values, 99)), 4),
        "mean_ms": round(float(values.mean()), 4),
    }


async def time_calls(call: Callable[[int], Awaitable[Any]], count: int) -> dict[str, float]:
    """Latency of ``count`` sequential calls (after a warm-up), call ``i`` given ``i``."""
    for i in range(WARMUP_CALLS):
        await call(i)
    durations = []
    for i in range(count):
        began = time.perf_counter()
        await call(i)
        durations.append(time.perf_counter() - began)
    return percentiles_ms(durations)


def write_hash_layout(client: redis.Redis, users: list[dict], products: list[dict]) -> None:
    """The alternative layout, for comparison: one hash per entity, every value as a string."""
    pipe = client.pipeline(transaction=False)
    for kind, records, id_field in (("user", users, "user_id"), ("product", products, "product_id")):
        for record in records:
            pipe.hset(f"{HASH_PREFIX}:{kind}:{record[id_field]}", mapping={k: str(v) for k, v in record.items()})
    pipe.execute()


async def lookups(redis_url: str, home: Path, count: int) -> dict[str, dict[str, float]]:
    """In-process lookup latency for the user plus ``CANDIDATES`` products: both stores and the hash layout."""
    users, products = read_catalog(home)
    rng = random.Random(0)
    requests = [
        (rng.choice(users)["user_id"], [p["product_id"] for p in rng.sample(products, CANDIDATES)])
        for _ in range(WARMUP_CALLS + count)
    ]
    settings = GatewaySettings(home=home, redis_url=redis_url, feature_timeout_ms=LOOKUP_TIMEOUT_MS)
    redis_store = RedisFeatureStore.from_settings(settings)
    await redis_store.start()
    memory_store = InMemoryFeatureStore(users, products)
    hashes = aioredis.Redis.from_url(redis_url)

    async def hgetall(i: int) -> list[dict[str, str]]:
        user_id, product_ids = requests[i]
        async with hashes.pipeline(transaction=False) as pipe:
            pipe.hgetall(f"{HASH_PREFIX}:user:{user_id}")
            for pid in product_ids:
                pipe.hgetall(f"{HASH_PREFIX}:product:{pid}")
            replies = await pipe.execute()
        return [{k.decode(): v.decode() for k, v in reply.items()} for reply in replies]

    try:
        figures = {
            "redis_mget_json": await time_calls(lambda i: redis_store.lookup(*requests[i]), count),
            "in_memory": await time_calls(lambda i: memory_store.lookup(*requests[i]), count),
            "redis_pipelined_hgetall": await time_calls(hgetall, count),
        }
        if redis_store.stats.errors or redis_store.stats.timeouts:
            raise RuntimeError(f"lookups failed during the benchmark: {redis_store.stats.as_dict()}")
        return figures
    finally:
        await redis_store.close()
        await hashes.aclose()


def end_to_end(port: int, body: bytes, concurrency: int, duration_s: float) -> dict[str, Any]:
    """Closed-loop latency and throughput through one gateway."""
    request = build_request(LOCALHOST, port, "/v1/recommendations", body)
    result = asyncio.run(closed_loop(LOCALHOST, port, request, concurrency=concurrency, duration_s=duration_s))
    return {"concurrency": concurrency, **result.summary()}


def run_checked(argv: list[str], log: Path) -> None:
    """Run a one-shot ``tandem`` command; raise with its output's path when it fails."""
    with open(log, "ab") as output:
        result = subprocess.run(argv, env=child_environment(), stdout=output, stderr=subprocess.STDOUT, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(argv[2:5])} failed; see {log}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=5.0, help="seconds per end-to-end measurement")
    parser.add_argument("--lookups", type=int, default=3000, help="timed lookups per store")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8])
    args = parser.parse_args(argv)
    redis_server = shutil.which("redis-server")
    if redis_server is None:
        print("redis-server is not on PATH: run `make install-test`", file=sys.stderr)
        return 1

    home = Path(tempfile.mkdtemp(prefix="tandem-bench-features-"))
    log = home / "bench.log"
    children = []
    report: dict[str, Any] = {
        "machine": {"cpus": os.cpu_count(), "python": sys.version.split()[0], "platform": platform.platform()},
        "candidates": CANDIDATES,
        "duration_s": args.duration,
    }
    try:
        redis_port = free_port()
        redis_url = f"redis://{LOCALHOST}:{redis_port}/0"
        argv_redis = [redis_server, "--port", str(redis_port), "--bind", LOCALHOST, "--save", "", "--appendonly", "no"]
        children.append(start(argv_redis, output=open(home / "redis.log", "ab")))  # noqa: SIM115 (held by the child)
        registry_uri = sqlite_registry_uri(home)
        run_checked(tandem_command("models", "bootstrap", "--home", str(home), "--registry-uri", registry_uri), log)
        run_checked(tandem_command("features", "load", "--home", str(home), "--redis-url", redis_url), log)

        endpoint = f"tcp://{LOCALHOST}:{free_port()}"
        worker = ["worker", "--home", str(home), "--bind", endpoint, "--registry-uri", registry_uri]
        worker += ["--models", "ranker@champion"]
        children.append(start(tandem_command(*worker), output=open(home / "worker.log", "ab")))  # noqa: SIM115
        ports = {"in_memory": free_port(), "redis": free_port()}
        for name, port in ports.items():
            env = child_environment({"TANDEM_REDIS_URL": redis_url if name == "redis" else ""})
            gateway = ["gateway", "--home", str(home), "--port", str(port), "--workers", endpoint]
            output = open(home / f"gateway-{name}.log", "ab")  # noqa: SIM115 (held by the child)
            children.append(start(tandem_command(*gateway), env=env, output=output))
        for name, port in ports.items():
            if not wait_http_ok(f"http://{LOCALHOST}:{port}/v2/health/ready", READY_TIMEOUT_S):
                print(f"the {name} gateway did not become ready; see {home}", file=sys.stderr)
                return 1

        write_hash_layout(redis.Redis.from_url(redis_url), *read_catalog(home))
        report["lookup"] = asyncio.run(lookups(redis_url, home, args.lookups))
        users, products = read_catalog(home)
        body = orjson.dumps(
            {"user_id": users[42]["user_id"], "candidates": [p["product_id"] for p in products[:CANDIDATES]], "k": K}
        )
        report["end_to_end"] = {
            name: [end_to_end(port, body, c, args.duration) for c in args.concurrency] for name, port in ports.items()
        }
    finally:
        for child in reversed(children):
            stop(child)

    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "feature_lookup.json").write_text(json.dumps(report, indent=2))
    print_table(report)
    return 0


def print_table(report: dict[str, Any]) -> None:
    """The figures as a small table."""
    print(f"\nmachine: {report['machine']}")
    print(f"\nlookup of 1 user + {report['candidates']} products, in process, one call at a time")
    print(f"{'layout':>26} {'p50 ms':>8} {'p99 ms':>8} {'mean ms':>8}")
    for name, figures in report["lookup"].items():
        print(f"{name:>26} {figures['p50_ms']:>8.3f} {figures['p99_ms']:>8.3f} {figures['mean_ms']:>8.3f}")
    store_of = {"redis": "redis_mget_json", "in_memory": "in_memory"}
    in_memory_p50 = {run["concurrency"]: run["p50_ms"] for run in report["end_to_end"]["in_memory"]}
    print(f"\n/v1/recommendations, {report['candidates']} candidates, end to end through a gateway")
    print(
        f"{'features':>10} {'clients':>8} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'errors':>7}"
        f" {'lookup share of p50':>20} {'p50 - in-memory p50':>20}"
    )
    for name, runs in report["end_to_end"].items():
        lookup_p50 = report["lookup"][store_of[name]]["p50_ms"]
        for run in runs:
            errors = run["requests"] - run["ok"]
            share = lookup_p50 / run["p50_ms"] if run["p50_ms"] else float("nan")
            extra = run["p50_ms"] - in_memory_p50[run["concurrency"]]
            print(
                f"{name:>10} {run['concurrency']:>8} {run['throughput_rps']:>8.0f} {run['p50_ms']:>8.2f}"
                f" {run['p99_ms']:>8.2f} {errors:>7} {share:>20.1%} {extra:>17.2f} ms"
            )


if __name__ == "__main__":
    raise SystemExit(main())
