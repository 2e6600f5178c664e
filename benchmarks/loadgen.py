"""A lean HTTP/1.1 load generator on asyncio, so the client costs little CPU beside the server.

Two modes: closed loop (``concurrency`` callers, each sending its next request when the last is answered) and
open loop (Poisson arrivals at a fixed ``rate_rps``, so a slow server cannot slow the offered load and hide its
latency: no coordinated omission, latency counts from the *scheduled* arrival). Both are bounded in time and in
count, and stop by themselves: requests still unanswered ``drain_s`` after the last send are cancelled and
counted as ``errors["unanswered"]``. Every latency is kept, by status; transport failures are counted by kind
(``errors``); ``summary()`` is the JSON-ready digest (throughput, goodput within a deadline, percentiles).

Both loops run on callbacks (a protocol per connection; in the open loop a timer per arrival, in the closed loop
each answer sending the next request), not a task and a stream per request: on two cores shared with the
server, that cut the open loop's CPU per request by a quarter to a third, and at 9,000 req/s against B2 its own
lateness at p99 from 14.8 to 1.3 ms (B2's p99 96 -> 2.1 ms); the closed loop's against B2 at 16 connections,
from 89-99 to 72-79 us of process CPU (53 -> 36 us in user space).

It drives any POST endpoint with a fixed body: ``v2_body`` builds KServe V2 infer bodies (JSON or the binary
tensor extension) and ``recommendation_body`` ``/v1/recommendations`` ones. As a command::

    python -m benchmarks.loadgen http://127.0.0.1:8000/v2/models/ranker/infer --body-file req.json \\
        --rate 500 --duration 10 --deadline-ms 100 --json out.json     # open loop; --concurrency N: closed
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys
import time
from collections import Counter
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

import numpy as np
import orjson

CONNECT_TIMEOUT_S = 5.0
MAX_IDLE_S = 2.0
DRAIN_S = 10.0
"""How long requests may stay unanswered after the last one is sent before they are cancelled."""
PERCENTILES = {"p50": 50.0, "p90": 90.0, "p99": 99.0, "p999": 99.9}
OK = 200
V2_HEADER_LENGTH = "Inference-Header-Content-Length"
_T = TypeVar("_T")


@dataclass(slots=True)
class LoadResult:
    """Everything one run observed. ``latencies_s`` holds every answered request's latency, in answer order."""

    latencies_s: list[float] = field(default_factory=list)
    statuses: Counter[int] = field(default_factory=Counter)
    latencies_by_status: dict[int, list[float]] = field(default_factory=dict)
    errors: Counter[str] = field(default_factory=Counter)
    client_delays_s: list[float] = field(default_factory=list)
    """Open loop: how late the client itself started each request (its own CPU share, not the server's)."""
    elapsed_s: float = 0.0
    sent: int = 0
    mode: str = ""
    offered_rps: float | None = None
    concurrency: int | None = None

    @property
    def ok(self) -> int:
        """Requests answered 200."""
        return self.statuses.get(OK, 0)

    @property
    def throughput(self) -> float:
        """Successful requests per second."""
        return self.ok / self.elapsed_s if self.elapsed_s else 0.0

    def goodput(self, deadline_s: float) -> float:
        """Requests per second answered 200 within ``deadline_s`` of their (scheduled) start."""
        if not self.elapsed_s:
            return 0.0
        good = sum(1 for latency in self.latencies_by_status.get(OK, ()) if latency <= deadline_s)
        return good / self.elapsed_s

    @classmethod
    def pooled(cls, results: Sequence[LoadResult]) -> LoadResult:
        """One result holding every request of ``results`` (runs of one kind: their mode, rate and concurrency)."""
        first = results[0]
        pool = cls(mode=first.mode, offered_rps=first.offered_rps, concurrency=first.concurrency)
        for result in results:
            pool.latencies_s += result.latencies_s
            pool.statuses += result.statuses
            for status, latencies in result.latencies_by_status.items():
                pool.latencies_by_status.setdefault(status, []).extend(latencies)
            pool.errors += result.errors
            pool.client_delays_s += result.client_delays_s
            pool.elapsed_s += result.elapsed_s
            pool.sent += result.sent
        return pool

    def record(self, status: int, latency_s: float) -> None:
        """One answered request."""
        self.latencies_s.append(latency_s)
        self.statuses[status] += 1
        self.latencies_by_status.setdefault(status, []).append(latency_s)

    def percentile_ms(self, q: float, status: int | None = None) -> float:
        """The q-th percentile latency in milliseconds, of all answered requests or those with ``status``."""
        samples = self.latencies_s if status is None else self.latencies_by_status.get(status, [])
        return float(np.percentile(samples, q) * 1000) if samples else float("nan")

    def summary(self, deadline_s: float | None = None) -> dict[str, Any]:
        """Figures for JSON output. ``p*_ms`` cover every answered request; ``latency_ms`` splits by status."""
        figures: dict[str, Any] = {"mode": self.mode} if self.mode else {}
        if self.offered_rps is not None:
            figures["offered_rps"] = round(self.offered_rps, 1)
        if self.concurrency is not None:
            figures["concurrency"] = self.concurrency
        figures |= {
            "sent": self.sent,
            "requests": len(self.latencies_s),
            "ok": self.ok,
            "elapsed_s": round(self.elapsed_s, 3),
            "throughput_rps": round(self.throughput, 1),
            "p50_ms": round(self.percentile_ms(50), 3),
            "p90_ms": round(self.percentile_ms(90), 3),
            "p99_ms": round(self.percentile_ms(99), 3),
            "p999_ms": round(self.percentile_ms(99.9), 3),
            "max_ms": round(max(self.latencies_s) * 1000, 3) if self.latencies_s else float("nan"),
            "statuses": {str(k): v for k, v in sorted(self.statuses.items())},
            "latency_ms": {str(k): _percentiles_ms(v) for k, v in sorted(self.latencies_by_status.items())},
            "p99_ms_by_status": {str(k): round(self.percentile_ms(99, k), 3) for k in self.latencies_by_status},
            "errors": dict(self.errors),
        }
        if self.client_delays_s:
            figures["client_delay_ms"] = _percentiles_ms(self.client_delays_s)
        if deadline_s is not None:
            figures["deadline_ms"] = round(deadline_s * 1000, 3)
            figures["goodput_rps"] = round(self.goodput(deadline_s), 1)
        return figures


def _percentiles_ms(samples: Sequence[float]) -> dict[str, float]:
    values = np.percentile(samples, list(PERCENTILES.values())) * 1000
    return {name: round(float(v), 3) for name, v in zip(PERCENTILES, values, strict=True)}


# ------------------------------------------------------------------------------------------------ bodies


def build_request(host: str, port: int, path: str, body: bytes, headers: dict[str, str] | None = None) -> bytes:
    """The bytes of one keep-alive POST."""
    lines = [f"POST {path} HTTP/1.1", f"Host: {host}:{port}", f"Content-Length: {len(body)}"]
    lines += [f"{k}: {v}" for k, v in (headers or {"Content-Type": "application/json"}).items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def v2_body(inputs: dict[str, np.ndarray], *, binary: bool = False) -> tuple[bytes, dict[str, str]]:
    """A V2 infer body over named arrays, and the headers it needs.

    JSON puts each tensor's values in ``data``; ``binary`` uses the binary tensor extension for inputs and
    asks for binary outputs (``Inference-Header-Content-Length`` names the JSON header's length).
    """
    from tandem.common.datatypes import datatype_of

    specs = []
    for name, array in inputs.items():
        spec: dict[str, Any] = {"name": name, "shape": list(array.shape), "datatype": datatype_of(array.dtype)}
        if binary:
            spec["parameters"] = {"binary_data_size": array.nbytes}
        else:
            spec["data"] = array.ravel()
        specs.append(spec)
    if not binary:
        return orjson.dumps({"inputs": specs}, option=orjson.OPT_SERIALIZE_NUMPY), {"Content-Type": "application/json"}
    header = orjson.dumps({"inputs": specs, "parameters": {"binary_data_output": True}})
    raw = b"".join(np.ascontiguousarray(a).tobytes() for a in inputs.values())
    return header + raw, {"Content-Type": "application/octet-stream", V2_HEADER_LENGTH: str(len(header))}


def recommendation_body(user_id: str, candidates: Sequence[str], k: int) -> bytes:
    """A ``/v1/recommendations`` body."""
    return orjson.dumps({"user_id": user_id, "candidates": list(candidates), "k": k})


# ------------------------------------------------------------------------------------------ connections


def _status_and_length(head: bytes) -> tuple[int, int]:
    """A response head's status and ``Content-Length`` (0 when absent); ValueError when it cannot be read."""
    status = int(head[9:12])
    for line in head.split(b"\r\n")[1:]:
        if line[:15].lower() == b"content-length:":
            return status, int(line[15:])
    return status, 0


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
        status, length = _status_and_length(await self.reader.readuntil(b"\r\n\r\n"))
        if length:
            await self.reader.readexactly(length)
        return status

    def close(self) -> None:
        self.writer.close()


_TRANSPORT_ERRORS = (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, asyncio.TimeoutError, ValueError)


class _Answering(asyncio.Protocol):
    """One keep-alive connection of either loop, answered by callbacks: no task or stream per request.

    At the rates the loops run at, a task, a stream reader and a coroutine per request cost the client more CPU
    than the server it measures spends on a bare echo, on the same cores.
    """

    __slots__ = ("_buffer", "_done", "_lost", "scheduled", "transport")

    def __init__(self, done: Callable[[_Answering, int, float], None], lost: Callable[[_Answering, str], None]):
        self._done = done
        self._lost = lost
        self._buffer = bytearray()
        self.transport: asyncio.Transport | None = None
        self.scheduled: float | None = None
        """When the request in flight was scheduled; None while idle."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def send(self, request: bytes, scheduled: float) -> None:
        self.scheduled = scheduled
        self.transport.write(request)  # type: ignore[union-attr]

    def data_received(self, data: bytes) -> None:
        buffer = self._buffer
        buffer += data
        end = buffer.find(b"\r\n\r\n")
        if end < 0 or self.scheduled is None:
            return
        try:
            status, length = _status_and_length(bytes(buffer[:end]))
        except ValueError:
            self._lost(self, "ValueError")  # a response it cannot read: counted once, then the connection goes
            if self.transport is not None:
                self.transport.close()
            return
        if len(buffer) < end + 4 + length:
            return  # the body is still coming
        del buffer[: end + 4 + length]
        scheduled, self.scheduled = self.scheduled, None
        self._done(self, status, scheduled)

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        # A connection closed under a request in flight failed it, as a stream's read would have.
        self._lost(self, type(exc).__name__ if exc is not None else "IncompleteReadError")

    @property
    def alive(self) -> bool:
        return self.transport is not None and not self.transport.is_closing()


async def open_loop(
    host: str,
    port: int,
    request: bytes,
    *,
    rate_rps: float,
    duration_s: float,
    seed: int = 1,
    max_connections: int = 512,
    max_requests: int = 10**7,
    drain_s: float = DRAIN_S,
    warmup_s: float = 0.0,
) -> LoadResult:
    """Poisson arrivals at ``rate_rps`` for ``duration_s`` (or ``max_requests``); latency from scheduled arrival.

    An arrival that finds all ``max_connections`` busy is counted as ``errors["no_connection"]`` (the client,
    not the server, ran out), so keep it well above rate x latency. Arrivals in the first ``warmup_s`` are
    sent at the same rate but not counted: the run opens its connections as it needs them, and the first
    request on each new connection waits for the server to accept it.
    """
    result = LoadResult(mode="open", offered_rps=rate_rps)
    loop = asyncio.get_running_loop()
    rng = random.Random(seed)
    idle: list[tuple[_Answering, float]] = []  # with when each went idle; the oldest at the bottom
    connections: set[_Answering] = set()  # open or opening, at most max_connections
    in_flight = 0
    settled = asyncio.Event()  # every request sent has its answer or error
    opening: set[asyncio.Task[None]] = set()
    sending = True
    counting = True  # off once the run is over: what comes after is neither an answer nor an error of it

    def finish_one() -> None:
        nonlocal in_flight
        in_flight -= 1
        if not sending and in_flight == 0:
            settled.set()

    def measured(scheduled: float) -> bool:
        return scheduled >= measured_from  # arrivals of the warm-up are sent, never counted

    def done(connection: _Answering, status: int, scheduled: float) -> None:
        if not counting:
            return
        finished = time.perf_counter()
        if measured(scheduled):
            result.record(status, finished - scheduled)
        idle.append((connection, finished))
        finish_one()

    def lost(connection: _Answering, kind: str) -> None:
        connections.discard(connection)
        if connection.scheduled is not None and counting:
            if measured(connection.scheduled):
                result.errors[kind] += 1
            connection.scheduled = None
            finish_one()

    async def open_then_send(scheduled: float) -> None:
        connection = _Answering(done, lost)
        connections.add(connection)
        try:
            await asyncio.wait_for(loop.create_connection(lambda: connection, host, port), CONNECT_TIMEOUT_S)
        except _TRANSPORT_ERRORS as exc:
            connections.discard(connection)
            if measured(scheduled):
                result.errors[type(exc).__name__] += 1
            finish_one()
            return
        connection.send(request, scheduled)

    def arrive(scheduled: float) -> None:
        nonlocal in_flight
        now = time.perf_counter()
        if measured(scheduled):
            result.sent += 1
            result.client_delays_s.append(now - scheduled)
        in_flight += 1
        # Like an HTTP client's pool, drop connections idle for longer than a server keeps them (uvicorn: 5 s):
        # reusing one races the server closing it, which is a client artifact, not a server error.
        while idle and (now - idle[0][1] > MAX_IDLE_S or not idle[0][0].alive):
            stale = idle.pop(0)[0]
            connections.discard(stale)
            if stale.transport is not None:
                stale.transport.close()
        while idle:
            connection = idle.pop()[0]
            if connection.alive:
                connection.send(request, scheduled)
                return
            connections.discard(connection)
        if len(connections) < max_connections:
            task = loop.create_task(open_then_send(scheduled))
            opening.add(task)
            task.add_done_callback(opening.discard)
            return
        if measured(scheduled):
            result.errors["no_connection"] += 1
        finish_one()

    # Arrivals are timer callbacks, each scheduling the next (every arrival already due is sent at once): a
    # sleep per arrival cost a future and a task wake-up each.
    began = time.perf_counter()
    measured_from = began + warmup_s
    stop_at = measured_from + duration_s

    def tick(next_at: float, woken: bool = False) -> None:
        nonlocal sending
        while next_at < stop_at and result.sent < max_requests:
            delay = next_at - time.perf_counter()
            # A timer may fire a little early (uvloop's resolution is 1 ms): its arrival goes then, rather than
            # the loop spinning on timers until the clock catches up.
            if delay > 0 and not woken:
                loop.call_later(delay, tick, next_at, True)
                return
            woken = False
            arrive(next_at)
            next_at += rng.expovariate(rate_rps)
        sending = False
        if in_flight == 0:
            settled.set()

    try:
        tick(began)
        if not await _settles(settled, duration_s + drain_s):
            result.errors["unanswered"] += in_flight
    finally:
        counting = False
        result.elapsed_s = time.perf_counter() - measured_from
        _close(opening, connections)
    return result


async def closed_loop(
    host: str,
    port: int,
    request: bytes,
    *,
    concurrency: int,
    duration_s: float,
    max_requests: int = 10**7,
    min_requests: int = 0,
    max_duration_s: float | None = None,
    drain_s: float = DRAIN_S,
) -> LoadResult:
    """``concurrency`` callers in a loop for ``duration_s`` (or ``max_requests`` sent in all).

    With ``min_requests`` and ``max_duration_s``, the callers go on past ``duration_s`` until that many are sent,
    for at most ``max_duration_s`` in all: a slow system's percentiles then rest on enough requests. A caller is
    a connection's callbacks: each answer sends the next request from the callback that read it.
    """
    result = LoadResult(mode="closed", concurrency=concurrency)
    loop = asyncio.get_running_loop()
    began = time.perf_counter()
    stop_at = began + duration_s
    longest_s = max(duration_s, max_duration_s or duration_s)
    give_up_at = began + longest_s
    callers = concurrency  # callers still sending or waiting for an answer
    finished = asyncio.Event()
    connections: set[_Answering] = set()
    opening: set[asyncio.Task[None]] = set()
    counting = True  # off once the run is over: what comes after is neither an answer nor an error of it

    def going() -> bool:
        now = time.perf_counter()
        if result.sent >= max_requests:
            return False
        return now < stop_at or (result.sent < min_requests and now < give_up_at)

    def next_request(connection: _Answering | None) -> None:
        """A caller's next request, on ``connection`` while it is open, else on a new one; or the caller stops."""
        nonlocal callers
        if not going():
            if connection is not None:
                connections.discard(connection)
                connection.transport.close()  # type: ignore[union-attr]
            callers -= 1
            if callers == 0:
                finished.set()
            return
        result.sent += 1
        if connection is not None and connection.alive:
            connection.send(request, time.perf_counter())
            return
        task = loop.create_task(open_then_send(time.perf_counter()))
        opening.add(task)
        task.add_done_callback(opening.discard)

    def done(connection: _Answering, status: int, sent_at: float) -> None:
        if counting:
            result.record(status, time.perf_counter() - sent_at)
            next_request(connection)

    def lost(connection: _Answering, kind: str) -> None:
        connections.discard(connection)
        if connection.scheduled is not None and counting:
            result.errors[kind] += 1
            connection.scheduled = None
            next_request(None)

    async def open_then_send(sent_at: float) -> None:
        connection = _Answering(done, lost)
        try:
            await asyncio.wait_for(loop.create_connection(lambda: connection, host, port), CONNECT_TIMEOUT_S)
        except _TRANSPORT_ERRORS as exc:
            if counting:
                result.errors[type(exc).__name__] += 1
                next_request(None)
            return
        connections.add(connection)
        connection.send(request, sent_at)  # latency counts from before the connect, as for a reused one

    try:
        for _ in range(concurrency):
            next_request(None)
        if not await _settles(finished, longest_s + drain_s):
            result.errors["unanswered"] += callers
    finally:
        counting = False
        _close(opening, connections)
    result.elapsed_s = time.perf_counter() - began
    return result


async def _settles(settled: asyncio.Event, timeout_s: float) -> bool:
    """Whether ``settled`` is set within ``timeout_s`` (every request answered or failed)."""
    try:
        await asyncio.wait_for(settled.wait(), timeout_s)
    except asyncio.TimeoutError:
        return False
    return True


def _close(opening: set[asyncio.Task[None]], connections: set[_Answering]) -> None:
    """The run is over: cancel the connections still opening and close the open ones."""
    for task in list(opening):
        task.cancel()
    for connection in list(connections):
        if connection.transport is not None:
            connection.transport.close()


def run(coroutine: Coroutine[Any, Any, _T]) -> _T:
    """Run a load coroutine on uvloop when installed (a cheaper client), else on asyncio's default loop."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coroutine)
    return uvloop.run(coroutine)


# ----------------------------------------------------------------------------------------------- command


def main(argv: list[str] | None = None) -> int:
    """``python -m benchmarks.loadgen URL ...``: one open- or closed-loop run, printed and optionally saved."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("url", help="http://HOST:PORT/PATH to POST to")
    body = parser.add_mutually_exclusive_group(required=True)
    body.add_argument("--body", help="request body (a JSON string)")
    body.add_argument("--body-file", type=Path, help="file holding the request body")
    parser.add_argument("--header", action="append", default=[], help="NAME: VALUE (repeatable)")
    load = parser.add_mutually_exclusive_group(required=True)
    load.add_argument("--rate", type=float, help="open loop: Poisson arrivals per second")
    load.add_argument("--concurrency", type=int, help="closed loop: callers")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds of load")
    parser.add_argument("--max-requests", type=int, default=10**7, help="stop after sending this many")
    parser.add_argument("--warmup", type=float, default=0.0, help="open loop: seconds sent first, not counted")
    parser.add_argument("--deadline-ms", type=float, help="report goodput: 200s answered within this")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--json", type=Path, help="write the summary here")
    args = parser.parse_args(argv)

    url = urlsplit(args.url)
    host, port = url.hostname or "127.0.0.1", url.port or 80
    payload = args.body.encode() if args.body is not None else args.body_file.read_bytes()
    headers = {"Content-Type": "application/json"}
    headers |= dict(h.split(":", 1) for h in args.header)
    request = build_request(host, port, url.path or "/", payload, {k.strip(): v.strip() for k, v in headers.items()})
    if args.rate is not None:
        coroutine = open_loop(
            host, port, request, rate_rps=args.rate, duration_s=args.duration, seed=args.seed,
            max_requests=args.max_requests, warmup_s=args.warmup,
        )  # fmt: skip
    else:
        coroutine = closed_loop(
            host, port, request, concurrency=args.concurrency, duration_s=args.duration,
            max_requests=args.max_requests,
        )  # fmt: skip
    result = run(coroutine)
    summary = result.summary(args.deadline_ms / 1000 if args.deadline_ms else None)
    text = json.dumps(summary, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")
    return 0 if result.ok else 1


if __name__ == "__main__":
    sys.exit(main())
