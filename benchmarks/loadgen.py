"""A lean HTTP/1.1 load generator on asyncio streams, so the client costs little CPU beside the server.

Two modes: closed loop (``concurrency`` callers, each sending its next request when the last is answered) and
open loop (Poisson arrivals at a fixed ``rate``, so a slow server cannot slow the offered load and hide its
latency: no coordinated omission). Both are bounded in time and count and record every latency exactly.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter
from dataclasses import dataclass, field

import numpy as np

CONNECT_TIMEOUT_S = 5.0


@dataclass(slots=True)
class LoadResult:
    latencies_s: list[float] = field(default_factory=list)
    statuses: Counter[int] = field(default_factory=Counter)
    latencies_by_status: dict[int, list[float]] = field(default_factory=dict)
    errors: Counter[str] = field(default_factory=Counter)
    elapsed_s: float = 0.0

    @property
    def ok(self) -> int:
        """Requests answered 200."""
        return self.statuses.get(200, 0)

    @property
    def throughput(self) -> float:
        """Successful requests per second."""
        return self.ok / self.elapsed_s if self.elapsed_s else 0.0

    def record(self, status: int, latency_s: float) -> None:
        """One answered request."""
        self.latencies_s.append(latency_s)
        self.statuses[status] += 1
        self.latencies_by_status.setdefault(status, []).append(latency_s)

    def percentile_ms(self, q: float, status: int | None = None) -> float:
        """The q-th percentile latency in milliseconds, of all answered requests or those with ``status``."""
        samples = self.latencies_s if status is None else self.latencies_by_status.get(status, [])
        return float(np.percentile(samples, q) * 1000) if samples else float("nan")

    def summary(self) -> dict[str, float | int | dict[str, int]]:
        """Figures for JSON output."""
        return {
            "requests": len(self.latencies_s),
            "ok": self.ok,
            "throughput_rps": round(self.throughput, 1),
            "p50_ms": round(self.percentile_ms(50), 3),
            "p99_ms": round(self.percentile_ms(99), 3),
            "p999_ms": round(self.percentile_ms(99.9), 3),
            "statuses": {str(k): v for k, v in self.statuses.items()},
            "p99_ms_by_status": {str(k): round(self.percentile_ms(99, k), 3) for k in self.latencies_by_status},
            "errors": dict(self.errors),
        }


def build_request(host: str, port: int, path: str, body: bytes, headers: dict[str, str] | None = None) -> bytes:
    """The bytes of one keep-alive POST."""
    lines = [f"POST {path} HTTP/1.1", f"Host: {host}:{port}", f"Content-Length: {len(body)}"]
    lines += [f"{k}: {v}" for k, v in (headers or {"Content-Type": "application/json"}).items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


class Connection:
    """One keep-alive connection that sends a request and reads one response at a time."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def open(cls, host: str, port: int) -> Connection:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), CONNECT_TIMEOUT_S)
        return cls(reader, writer)

    async def roundtrip(self, request: bytes) -> int:
        """Send ``request``; return the response status after reading the whole body."""
        self.writer.write(request)
        head = await self.reader.readuntil(b"\r\n\r\n")
        status = int(head[9:12])
        length = 0
        for line in head.split(b"\r\n")[1:]:
            if line[:15].lower() == b"content-length:":
                length = int(line[15:])
                break
        if length:
            await self.reader.readexactly(length)
        return status

    def close(self) -> None:
        self.writer.close()


async def closed_loop(
    host: str, port: int, request: bytes, *, concurrency: int, duration_s: float, max_requests: int = 10**7
) -> LoadResult:
    """``concurrency`` callers in a loop for ``duration_s`` (or ``max_requests`` in all)."""
    result = LoadResult()
    sent = 0
    stop_at = time.perf_counter() + duration_s

    async def caller() -> None:
        nonlocal sent
        connection = await Connection.open(host, port)
        try:
            while time.perf_counter() < stop_at and sent < max_requests:
                sent += 1
                started = time.perf_counter()
                try:
                    status = await connection.roundtrip(request)
                except (OSError, asyncio.IncompleteReadError) as exc:
                    result.errors[type(exc).__name__] += 1
                    connection.close()
                    connection = await Connection.open(host, port)
                    continue
                result.record(status, time.perf_counter() - started)
        finally:
            connection.close()

    began = time.perf_counter()
    await asyncio.gather(*(caller() for _ in range(concurrency)))
    result.elapsed_s = time.perf_counter() - began
    return result


async def open_loop(
    host: str,
    port: int,
    request: bytes,
    *,
    rate_rps: float,
    duration_s: float,
    seed: int = 1,
    max_connections: int = 512,
) -> LoadResult:
    """Poisson arrivals at ``rate_rps`` for ``duration_s``; latency counts from the scheduled arrival."""
    result = LoadResult()
    rng = random.Random(seed)
    idle: list[Connection] = []
    opened = 0
    tasks: list[asyncio.Task[None]] = []

    async def one(scheduled: float) -> None:
        nonlocal opened
        if idle:
            connection = idle.pop()
        elif opened < max_connections:
            opened += 1
            connection = await Connection.open(host, port)
        else:
            result.errors["no_connection"] += 1
            return
        try:
            status = await connection.roundtrip(request)
        except (OSError, asyncio.IncompleteReadError) as exc:
            result.errors[type(exc).__name__] += 1
            connection.close()
            opened -= 1
            return
        result.record(status, time.perf_counter() - scheduled)
        idle.append(connection)

    began = time.perf_counter()
    next_at = began
    while next_at < began + duration_s:
        delay = next_at - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one(next_at)))
        next_at += rng.expovariate(rate_rps)
    await asyncio.gather(*tasks)
    result.elapsed_s = time.perf_counter() - began
    for connection in idle:
        connection.close()
    return result
