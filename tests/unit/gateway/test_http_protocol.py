"""The bounded httptools protocol, fed bytes through a fake transport (no sockets)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import orjson
import pytest
from uvicorn.config import Config
from uvicorn.server import ServerState

from tandem.gateway.admission import ADMISSION_STATE_KEY, Admission
from tandem.gateway.http_protocol import BoundedHttpToolsProtocol
from tandem.gateway.saturation import Saturation
from tests.support.loop_lag import FixedLag

LIMIT = 1024


class FakeTransport(asyncio.Transport):
    def __init__(self) -> None:
        super().__init__()
        self.written = bytearray()
        self.write_calls = 0
        self.closed = False

    def get_extra_info(self, name: str, default: object = None) -> object:
        return {"sockname": ("127.0.0.1", 8000), "peername": ("127.0.0.1", 50000)}.get(name, default)

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if not self.closed:
            self.written += data
            self.write_calls += 1

    def close(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        pass


async def _ok(scope, receive, send) -> None:  # type: ignore[no-untyped-def]
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]})
    await send({"type": "http.response.body", "body": b"ok"})


@pytest.fixture
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    loop = asyncio.new_event_loop()
    yield loop
    loop.close()


class CountingApp:
    def __init__(self) -> None:
        self.calls = 0

    async def __call__(self, scope, receive, send) -> None:  # type: ignore[no-untyped-def]
        self.calls += 1
        await _ok(scope, receive, send)


def _connect(
    loop: asyncio.AbstractEventLoop, app_state: dict | None = None, app: object = _ok
) -> tuple[BoundedHttpToolsProtocol, FakeTransport]:
    config = Config(app=app, h11_max_incomplete_event_size=LIMIT, log_level="critical", lifespan="off")
    config.load()
    protocol = BoundedHttpToolsProtocol(
        config=config, server_state=ServerState(), app_state=app_state or {}, _loop=loop
    )
    transport = FakeTransport()
    protocol.connection_made(transport)
    return protocol, transport


def _status(transport: FakeTransport) -> int:
    return int(bytes(transport.written).split(b" ", 2)[1])


def _body(transport: FakeTransport) -> dict:
    return orjson.loads(bytes(transport.written).split(b"\r\n\r\n", 1)[1])


def test_a_small_request_is_served(loop: asyncio.AbstractEventLoop) -> None:
    protocol, transport = _connect(loop)
    protocol.data_received(b"GET /v2 HTTP/1.1\r\nHost: x\r\nX-Pad: " + b"a" * (LIMIT // 2) + b"\r\n\r\n")
    loop.run_until_complete(asyncio.sleep(0.01))
    assert _status(transport) == 200
    assert not transport.closed


def test_a_responses_head_and_body_leave_in_one_write(loop: asyncio.AbstractEventLoop) -> None:
    protocol, transport = _connect(loop)
    protocol.data_received(b"GET /v2 HTTP/1.1\r\nHost: x\r\n\r\n")
    loop.run_until_complete(asyncio.sleep(0.01))
    assert transport.write_calls == 1
    assert bytes(transport.written).endswith(b"\r\n\r\nok")


def test_many_headers_past_the_limit_get_431_and_the_connection_closes(loop: asyncio.AbstractEventLoop) -> None:
    protocol, transport = _connect(loop)
    headers = b"".join(b"X-H%d: %s\r\n" % (i, b"v" * 50) for i in range(40))
    protocol.data_received(b"GET / HTTP/1.1\r\nHost: x\r\n" + headers + b"\r\n")
    assert _status(transport) == 431
    assert str(LIMIT) in _body(transport)["error"]
    assert transport.closed


def test_a_long_url_gets_431(loop: asyncio.AbstractEventLoop) -> None:
    protocol, transport = _connect(loop)
    protocol.data_received(b"GET /" + b"a" * (2 * LIMIT) + b" HTTP/1.1\r\nHost: x\r\n\r\n")
    assert _status(transport) == 431


def test_one_endless_header_line_in_small_chunks_is_cut_off_early(loop: asyncio.AbstractEventLoop) -> None:
    protocol, transport = _connect(loop)
    protocol.data_received(b"GET / HTTP/1.1\r\nHost: x\r\nX-Endless: ")
    fed = 0
    while not transport.closed and fed < 100 * LIMIT:
        protocol.data_received(b"a" * 100)
        fed += 100
    assert transport.closed and _status(transport) == 431
    assert fed <= 2 * LIMIT  # stopped within the limit plus a chunk, not after megabytes
    protocol.data_received(b"a" * 100)  # more data after the answer is ignored


def test_a_head_split_across_chunks_within_the_limit_is_served(loop: asyncio.AbstractEventLoop) -> None:
    protocol, transport = _connect(loop)
    request = b"POST /x HTTP/1.1\r\nHost: x\r\nX-Pad: " + b"a" * (LIMIT - 100) + b"\r\nContent-Length: 5000\r\n\r\n"
    for start in range(0, len(request), 7):
        protocol.data_received(request[start : start + 7])
    protocol.data_received(b"b" * 5000)  # a body larger than the head limit is not the head's business
    loop.run_until_complete(asyncio.sleep(0.01))
    assert _status(transport) == 200


def test_other_parse_errors_still_get_uvicorns_400(loop: asyncio.AbstractEventLoop) -> None:
    protocol, transport = _connect(loop)
    protocol.data_received(b"NOT HTTP AT ALL\r\n\r\n")
    assert _status(transport) == 400


def _post(timeout_ms: int | None = None) -> bytes:
    header = b"" if timeout_ms is None else b"X-Request-Timeout-Ms: %d\r\n" % timeout_ms
    return b"POST /v2/models/m/infer HTTP/1.1\r\nHost: x\r\n" + header + b"Content-Length: 2\r\n\r\n{}"


def _overloaded(loop: asyncio.AbstractEventLoop, lag_s: float) -> tuple[FakeTransport, CountingApp, Admission]:
    app = CountingApp()
    admission = Admission(8, lag=FixedLag(lag_s), lag_share=0.25, default_budget_ms=1000)
    protocol, transport = _connect(loop, {ADMISSION_STATE_KEY: admission}, app)
    protocol.data_received(_post(100) + b"GET /v2 HTTP/1.1\r\nHost: x\r\n\r\n")
    loop.run_until_complete(asyncio.sleep(0.01))
    return transport, app, admission


def test_a_post_is_refused_for_the_loops_lag_as_soon_as_its_head_is_parsed(loop: asyncio.AbstractEventLoop) -> None:
    transport, app, admission = _overloaded(loop, lag_s=0.050)  # 50 ms of lag: more than 25% of 100 ms
    first, second = bytes(transport.written).split(b"HTTP/1.1 ")[1:]
    assert first.startswith(b"503 ") and b"retry-after: 1" in first.lower()
    assert b"of this request's 100 ms deadline" in first
    assert second.startswith(b"200 ")  # the same connection goes on: the GET after it is served
    assert app.calls == 1 and admission.rejected == 1
    assert not transport.closed


def test_a_post_whose_deadline_absorbs_the_lag_reaches_the_app(loop: asyncio.AbstractEventLoop) -> None:
    transport, app, admission = _overloaded(loop, lag_s=0.010)
    assert bytes(transport.written).count(b"HTTP/1.1 200 ") == 2
    assert app.calls == 2 and admission.rejected == 0


def test_a_post_is_refused_for_a_saturated_loop_as_soon_as_its_head_is_parsed(loop: asyncio.AbstractEventLoop) -> None:
    app = CountingApp()
    saturation = Saturation(clock=lambda: 0.0, cpu_clock=lambda: 0.0)
    saturation.saturated, saturation.finish_rate = True, 1000.0  # 1,000 finished a second
    admission = Admission(4096, lag_share=0.25, saturation=saturation)
    admission.inflight = 30  # 30 ms to finish them: more than a quarter of 100 ms, within a quarter of 1 s
    protocol, transport = _connect(loop, {ADMISSION_STATE_KEY: admission}, app)
    protocol.data_received(_post(100) + _post(1000))
    loop.run_until_complete(asyncio.sleep(0.01))
    first, second = bytes(transport.written).split(b"HTTP/1.1 ")[1:]
    assert first.startswith(b"503 ") and b"CPU is saturated" in first
    assert second.startswith(b"200 ")
    assert app.calls == 1 and admission.rejected == 1


def _lagging(loop: asyncio.AbstractEventLoop, app: CountingApp) -> tuple[BoundedHttpToolsProtocol, FakeTransport]:
    admission = Admission(8, lag=FixedLag(0.050), lag_share=0.25, default_budget_ms=1000)
    return _connect(loop, {ADMISSION_STATE_KEY: admission}, app)


def test_a_refusal_is_written_before_the_loop_runs_again(loop: asyncio.AbstractEventLoop) -> None:
    # Under overload one loop iteration reads hundreds of requests: a refusal must not wait for the next one.
    protocol, transport = _lagging(loop, CountingApp())
    protocol.data_received(_post(100))
    assert _status(transport) == 503 and transport.write_calls == 1
    assert b"content-length: %d\r\n" % len(orjson.dumps(_body(transport))) in bytes(transport.written)


def test_a_refused_requests_body_is_dropped_across_chunks_and_the_next_request_is_served(
    loop: asyncio.AbstractEventLoop,
) -> None:
    app = CountingApp()
    protocol, transport = _lagging(loop, app)
    head, body = _post(100).split(b"\r\n\r\n")
    protocol.data_received(head + b"\r\n\r\n")  # the body comes later, in its own chunk
    protocol.data_received(body + b"GET /v2 HTTP/1.1\r\nHost: x\r\n\r\n")
    loop.run_until_complete(asyncio.sleep(0.01))
    first, second = bytes(transport.written).split(b"HTTP/1.1 ")[1:]
    assert first.startswith(b"503 ") and second.startswith(b"200 ")
    assert app.calls == 1 and not transport.closed


def test_a_refused_http_1_0_request_closes_its_connection(loop: asyncio.AbstractEventLoop) -> None:
    protocol, transport = _lagging(loop, CountingApp())
    protocol.data_received(_post(100).replace(b"HTTP/1.1", b"HTTP/1.0"))
    assert _status(transport) == 503 and b"connection: close\r\n" in bytes(transport.written)
    assert transport.closed


class SlowApp(CountingApp):
    async def __call__(self, scope, receive, send) -> None:  # type: ignore[no-untyped-def]
        await asyncio.sleep(0.01)
        await super().__call__(scope, receive, send)


def test_a_pipelined_post_is_judged_by_the_middleware_and_answered_after_the_request_before_it(
    loop: asyncio.AbstractEventLoop,
) -> None:
    from tandem.gateway.admission import AdmissionMiddleware

    app = SlowApp()
    admission = Admission(8, lag=FixedLag(0.050), lag_share=0.25, default_budget_ms=1000)
    protocol, transport = _connect(loop, {ADMISSION_STATE_KEY: admission}, AdmissionMiddleware(app, admission))
    protocol.data_received(b"GET /v2 HTTP/1.1\r\nHost: x\r\n\r\n" + _post(100))
    assert not transport.written  # not refused in place: its answer must follow the GET's
    loop.run_until_complete(asyncio.sleep(0.05))
    first, second = bytes(transport.written).split(b"HTTP/1.1 ")[1:]
    assert first.startswith(b"200 ") and second.startswith(b"503 ")
    assert app.calls == 1 and admission.rejected == 1


class InflightProbe(CountingApp):
    """Records the admission's count in flight while the app runs."""

    def __init__(self, admission: Admission) -> None:
        super().__init__()
        self.admission = admission
        self.seen: list[int] = []

    async def __call__(self, scope, receive, send) -> None:  # type: ignore[no-untyped-def]
        self.seen.append(self.admission.inflight)
        await super().__call__(scope, receive, send)


def test_heads_parsed_in_one_loop_iteration_are_judged_against_each_other(loop: asyncio.AbstractEventLoop) -> None:
    # One iteration reads many connections before any of their tasks runs: each admitted head must count at once.
    saturation = Saturation(clock=lambda: 0.0, cpu_clock=lambda: 0.0)
    saturation.saturated, saturation.finish_rate = True, 1000.0  # a quarter of 100 ms holds 25 requests
    admission = Admission(4096, lag_share=0.25, saturation=saturation)
    app = CountingApp()
    connections = [_connect(loop, {ADMISSION_STATE_KEY: admission}, app) for _ in range(30)]
    for protocol, _ in connections:
        protocol.data_received(_post(100))
    assert admission.inflight == 25
    refused = [transport for _, transport in connections if transport.written]
    assert len(refused) == 5 and all(_status(t) == 503 for t in refused)
    loop.run_until_complete(asyncio.sleep(0.01))
    assert app.calls == 25 and admission.inflight == 0 and admission.rejected == 5


def test_the_protocol_holds_the_place_in_flight_and_the_middleware_does_not_count_it_again(
    loop: asyncio.AbstractEventLoop,
) -> None:
    from tandem.gateway.admission import AdmissionMiddleware

    admission = Admission(2, lag_share=0.25)
    probe = InflightProbe(admission)
    app = AdmissionMiddleware(probe, admission=admission)
    connections = [_connect(loop, {ADMISSION_STATE_KEY: admission}, app) for _ in range(3)]
    for protocol, _ in connections:
        protocol.data_received(_post(100))
    third = connections[2][1]
    assert _status(third) == 503 and b"limit of 2 requests in flight" in bytes(third.written)
    loop.run_until_complete(asyncio.sleep(0.01))
    # Both held their places from their heads on (the second finishes after the first); counted again by the
    # middleware, each would have met the limit of 2 and been refused.
    assert probe.seen == [2, 1] and admission.inflight == 0


def test_a_post_uvicorn_cannot_start_gives_its_place_back(loop: asyncio.AbstractEventLoop) -> None:
    admission = Admission(8, lag_share=0.25)
    protocol, transport = _connect(loop, {ADMISSION_STATE_KEY: admission}, CountingApp())
    protocol.data_received(b"POST http://[bad/ HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n")
    assert _status(transport) == 400 and admission.inflight == 0


_GET = b"GET /v2 HTTP/1.1\r\nHost: x\r\n\r\n"


def _served(loop: asyncio.AbstractEventLoop, protocol: BoundedHttpToolsProtocol, request: bytes = _GET) -> None:
    protocol.data_received(request)
    loop.run_until_complete(asyncio.sleep(0.005))


def test_one_keep_alive_timer_serves_many_requests(loop: asyncio.AbstractEventLoop) -> None:
    # uvicorn arms and cancels a timer per request; under load that cost as much as writing the response.
    protocol, transport = _connect(loop)
    _served(loop, protocol)
    timer = protocol.timeout_keep_alive_task
    assert timer is not None
    for _ in range(3):
        _served(loop, protocol)
    assert protocol.timeout_keep_alive_task is timer and not timer.cancelled()
    assert bytes(transport.written).count(b"HTTP/1.1 200 ") == 4 and not transport.closed


def test_the_keep_alive_check_closes_only_a_connection_idle_for_the_whole_timeout(
    loop: asyncio.AbstractEventLoop,
) -> None:
    protocol, transport = _connect(loop)
    _served(loop, protocol)
    timeout = protocol.timeout_keep_alive
    protocol._idle_since = loop.time() - timeout / 2  # a request came and went since the timer was armed
    protocol._keep_alive_check()
    assert not transport.closed and protocol.timeout_keep_alive_task is not None  # it waits out the rest
    protocol.timeout_keep_alive_task.cancel()
    protocol._idle_since = None  # a request is being served
    protocol._keep_alive_check()
    assert not transport.closed and protocol.timeout_keep_alive_task is None  # its response arms it again
    _served(loop, protocol)
    assert protocol.timeout_keep_alive_task is not None
    protocol._idle_since = loop.time() - timeout
    protocol._keep_alive_check()
    assert transport.closed


def test_an_idle_connection_is_closed_after_the_keep_alive_timeout(loop: asyncio.AbstractEventLoop) -> None:
    protocol, transport = _connect(loop)
    protocol.timeout_keep_alive = 0.02
    _served(loop, protocol)
    loop.run_until_complete(asyncio.sleep(0.3))
    assert transport.closed


def test_the_keep_alive_timer_goes_with_the_connection(loop: asyncio.AbstractEventLoop) -> None:
    protocol, _ = _connect(loop)
    _served(loop, protocol)
    timer = protocol.timeout_keep_alive_task
    protocol.connection_lost(None)
    assert timer is not None and timer.cancelled() and protocol.timeout_keep_alive_task is None
