"""The load generator against the B1 and B2 baselines, about a second each: the JSON it writes has its shape.

No timing is asserted: these run on shared machines. The servers run in this process on uvicorn threads (B1
serving the ``Echo`` test model, so no registry is needed); ``make bench`` runs them as processes.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import threading
import time
import urllib.request
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import uvicorn
from fastapi import FastAPI, Request, Response

from benchmarks import loadgen
from benchmarks.baselines import echo, naive
from benchmarks.measure import Entry, Workload, paired_rate
from benchmarks.stack import Server
from tandem.demo.test_models import Echo
from tests.support.ports import LOCALHOST, free_port

START_TIMEOUT_S = 20.0
PATH = "/v2/models/echo/infer"
LATENCY_KEYS = {"p50", "p90", "p99", "p999"}


@contextmanager
def serving(app: FastAPI) -> Iterator[int]:
    """``app`` on a free port in a uvicorn thread for the block's duration; yields the port."""
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host=LOCALHOST, port=port, log_level="warning", access_log=False))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + START_TIMEOUT_S
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("the test server did not start")
        time.sleep(0.02)
    try:
        yield port
    finally:
        server.should_exit = True
        thread.join(START_TIMEOUT_S)


@pytest.fixture(params=["B1", "B2"])
def baseline(request: pytest.FixtureRequest) -> Iterator[int]:
    app = naive.create_app(Echo(), "echo") if request.param == "B1" else echo.create_app()
    with serving(app) as port:
        yield port


def body() -> tuple[bytes, dict[str, str]]:
    return loadgen.v2_body({"x": np.arange(16, dtype=np.float32)[None, :]})


def check_summary(summary: dict, mode: str) -> None:
    assert summary["mode"] == mode
    assert summary["sent"] >= summary["requests"] == summary["ok"] > 0
    assert summary["statuses"] == {"200": summary["ok"]}
    assert summary["errors"] == {}
    assert set(summary["latency_ms"]["200"]) == LATENCY_KEYS
    assert summary["throughput_rps"] > 0 and summary["goodput_rps"] <= summary["throughput_rps"]
    json.dumps(summary, allow_nan=False)  # JSON as written to benchmarks/results


def test_closed_and_open_loop_summaries_have_their_shape(baseline: int) -> None:
    payload, headers = body()
    request = loadgen.build_request(LOCALHOST, baseline, PATH, payload, headers)
    closed = asyncio.run(loadgen.closed_loop(LOCALHOST, baseline, request, concurrency=2, duration_s=0.5))
    check_summary(closed.summary(deadline_s=1.0), "closed")
    assert closed.summary()["concurrency"] == 2
    opened = asyncio.run(loadgen.open_loop(LOCALHOST, baseline, request, rate_rps=200, duration_s=0.5))
    summary = opened.summary(deadline_s=1.0)
    check_summary(summary, "open")
    assert summary["offered_rps"] == 200


def test_b1_answers_a_v2_response_and_b2_echoes() -> None:
    payload, headers = body()
    for app, check in (
        (naive.create_app(Echo(), "echo"), lambda answer: answer["outputs"][0]["data"] == list(range(16))),
        (echo.create_app(), lambda answer: answer == json.loads(payload)),
    ):
        with serving(app) as port:
            call = urllib.request.Request(f"http://{LOCALHOST}:{port}{PATH}", data=payload, headers=headers)
            with urllib.request.urlopen(call, timeout=5) as answer:
                assert check(json.loads(answer.read()))


def test_a_bounded_count_stops_both_loops(baseline: int) -> None:
    payload, headers = body()
    request = loadgen.build_request(LOCALHOST, baseline, PATH, payload, headers)
    closed = asyncio.run(
        loadgen.closed_loop(LOCALHOST, baseline, request, concurrency=2, duration_s=30, max_requests=20)
    )
    opened = asyncio.run(loadgen.open_loop(LOCALHOST, baseline, request, rate_rps=500, duration_s=30, max_requests=20))
    assert closed.sent == closed.ok == 20
    assert opened.sent == opened.ok == 20


def test_the_open_loops_warm_up_is_sent_at_the_rate_and_not_counted() -> None:
    rate, warmup_s, duration_s, seed = 200.0, 0.4, 0.4, 5
    rng = random.Random(seed)  # the schedule open_loop draws: the first arrival at once, then exponential gaps
    offsets, at = [], 0.0
    while at < warmup_s + duration_s:
        offsets.append(at)
        at += rng.expovariate(rate)
    warm = sum(1 for offset in offsets if offset < warmup_s)
    app = echo.create_app()
    answered = []

    @app.middleware("http")
    async def count(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        answered.append(1)
        return await call_next(request)

    payload, headers = body()
    with serving(app) as port:
        request = loadgen.build_request(LOCALHOST, port, PATH, payload, headers)
        result = asyncio.run(
            loadgen.open_loop(
                LOCALHOST, port, request, rate_rps=rate, duration_s=duration_s, seed=seed, warmup_s=warmup_s
            )
        )
    assert 0 < warm < len(offsets)
    assert result.sent == result.ok == len(offsets) - warm
    assert len(result.client_delays_s) == result.sent
    assert len(answered) == len(offsets)  # the warm-up's requests went to the server all the same


def test_refused_connections_are_counted_by_kind() -> None:
    port = free_port()  # nothing listens here
    request = loadgen.build_request(LOCALHOST, port, PATH, b"{}")
    result = asyncio.run(loadgen.open_loop(LOCALHOST, port, request, rate_rps=100, duration_s=0.2))
    assert result.ok == 0 and sum(result.errors.values()) == result.sent > 0
    assert "ConnectionRefusedError" in result.errors


def test_the_command_writes_json(tmp_path: Path) -> None:
    payload, _ = body()
    with serving(echo.create_app()) as port:
        out = tmp_path / "run.json"
        code = loadgen.main(
            [f"http://{LOCALHOST}:{port}{PATH}", "--body", payload.decode(), "--rate", "100", "--duration", "0.5",
             "--deadline-ms", "1000", "--json", str(out)]
        )  # fmt: skip
    assert code == 0
    check_summary(json.loads(out.read_text()), "open")


@contextmanager
def raw_server(handle: object) -> Iterator[int]:
    """An asyncio server in a thread whose connections run ``handle(reader, writer)``; yields its port."""
    loop = asyncio.new_event_loop()
    started = threading.Event()
    port = free_port()

    async def serve() -> None:
        server = await asyncio.start_server(handle, LOCALHOST, port)  # type: ignore[arg-type]
        started.set()
        async with server:
            await server.serve_forever()

    def run() -> None:
        with contextlib.suppress(asyncio.CancelledError):  # how the block's end stops it
            loop.run_until_complete(serve())

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    assert started.wait(START_TIMEOUT_S)
    try:
        yield port
    finally:
        for task in asyncio.all_tasks(loop):
            loop.call_soon_threadsafe(task.cancel)
        thread.join(START_TIMEOUT_S)


async def _read_request(reader: asyncio.StreamReader) -> None:
    head = await reader.readuntil(b"\r\n\r\n")
    length = int(next(line for line in head.split(b"\r\n") if line.lower().startswith(b"content-length:"))[15:])
    await reader.readexactly(length)


async def answer_in_pieces(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    body = b'{"answer": "in pieces"}'
    while True:
        await _read_request(reader)
        for piece in (b"HTTP/1.1 200 OK\r\nContent-", b"Length: %d\r\n\r\n" % len(body) + body[:5], body[5:]):
            writer.write(piece)
            await writer.drain()
            await asyncio.sleep(0.002)


async def hang_up(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await _read_request(reader)
    writer.close()


async def garble(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await _read_request(reader)
    writer.write(b"HTTP/1.1 2xx nonsense\r\n\r\n")
    await writer.drain()


def test_the_open_loop_reads_a_response_that_arrives_in_pieces_over_kept_alive_connections() -> None:
    with raw_server(answer_in_pieces) as port:
        request = loadgen.build_request(LOCALHOST, port, PATH, b"{}")
        result = asyncio.run(loadgen.open_loop(LOCALHOST, port, request, rate_rps=100, duration_s=0.5))
    assert result.sent == result.ok > 0 and not result.errors
    assert len(result.client_delays_s) == result.sent


@pytest.mark.parametrize(("handle", "kind"), [(hang_up, "IncompleteReadError"), (garble, "ValueError")])
def test_the_open_loop_counts_a_failed_answer_once_by_kind(handle: object, kind: str) -> None:
    with raw_server(handle) as port:
        request = loadgen.build_request(LOCALHOST, port, PATH, b"{}")
        result = asyncio.run(loadgen.open_loop(LOCALHOST, port, request, rate_rps=100, duration_s=0.3))
    assert result.ok == 0 and result.sent > 0
    assert result.errors == {kind: result.sent}


@pytest.mark.parametrize(("handle", "kind"), [(hang_up, "IncompleteReadError"), (garble, "ValueError")])
def test_the_closed_loop_counts_a_failed_answer_once_and_calls_again_on_a_new_connection(
    handle: object, kind: str
) -> None:
    with raw_server(handle) as port:
        request = loadgen.build_request(LOCALHOST, port, PATH, b"{}")
        result = asyncio.run(
            loadgen.closed_loop(LOCALHOST, port, request, concurrency=2, duration_s=30, max_requests=12)
        )
    assert result.ok == 0
    assert result.sent == 12
    assert result.errors == {kind: 12}


def test_the_closed_loop_counts_a_refused_connection_and_stops_on_time() -> None:
    port = free_port()  # nothing listens there
    request = loadgen.build_request(LOCALHOST, port, PATH, b"{}")
    result = asyncio.run(loadgen.closed_loop(LOCALHOST, port, request, concurrency=2, duration_s=0.2))
    assert result.ok == 0 and result.sent > 0
    assert result.errors == {"ConnectionRefusedError": result.sent}


def test_a_closed_loop_goes_on_past_its_duration_until_its_minimum_count(baseline: int) -> None:
    payload, headers = body()
    request = loadgen.build_request(LOCALHOST, baseline, PATH, payload, headers)
    result = asyncio.run(
        loadgen.closed_loop(
            LOCALHOST, baseline, request, concurrency=2, duration_s=0.0, min_requests=30, max_duration_s=30
        )
    )
    assert result.sent == result.ok == 30


def test_the_minimum_count_gives_way_to_the_longest_duration() -> None:
    app = FastAPI()

    @app.post(PATH)
    async def slow(_: Request) -> Response:
        await asyncio.sleep(0.05)
        return Response(b"{}", media_type="application/json")

    payload, headers = body()
    with serving(app) as port:
        request = loadgen.build_request(LOCALHOST, port, PATH, payload, headers)
        result = asyncio.run(
            loadgen.closed_loop(
                LOCALHOST, port, request, concurrency=1, duration_s=0.0, min_requests=10_000, max_duration_s=0.3
            )
        )
    assert 0 < result.ok == result.sent < 10_000


def test_paired_rounds_are_pooled_to_the_minimum_count() -> None:
    payload, headers = body()
    workload = Workload("echo", "echo", payload, headers)
    with serving(echo.create_app()) as port:
        server = Server("b2", port, path_template=PATH)
        entries = [Entry(label, server, workload, (1,)) for label in ("first", "second")]
        figures = paired_rate(entries, rate_rps=50.0, duration_s=0.1, rounds=2, min_requests=40)
    for label in ("first", "second"):
        figure = figures[label]
        assert figure["pooled_rounds"] == len(figure["runs"]) == 2
        assert figure["requests"] == sum(run["requests"] for run in figure["runs"]) > 0
        assert figure["statuses"] == {"200": figure["requests"]}
        # Each round ran 0.4 s (40 requests at 50 req/s over two rounds), not the 0.1 s asked for.
        assert figure["sent_rps"] == pytest.approx(sum(run["sent"] for run in figure["runs"]) / 0.8, abs=0.1)
