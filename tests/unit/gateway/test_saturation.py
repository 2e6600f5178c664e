"""A saturated gateway bounds the requests in flight by its finish rate and the newcomer's deadline."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import httpx
from fastapi import FastAPI

from tandem.gateway.admission import MIN_SATURATED_INFLIGHT, Admission, AdmissionMiddleware
from tandem.gateway.saturation import WINDOW_S, Saturation, schedstat_clock
from tests.support.scopes import post_scope


class Clocks:
    """A wall clock and a thread CPU clock the test moves."""

    def __init__(self) -> None:
        self.wall = 0.0  # from zero, so that sums of window lengths stay exact
        self.cpu = 0.0

    def spend(self, wall_s: float, cpu_s: float) -> None:
        self.wall += wall_s
        self.cpu += cpu_s


def _saturation(clocks: Clocks) -> Saturation:
    saturation = Saturation(clock=lambda: clocks.wall, cpu_clock=lambda: clocks.cpu)
    saturation.tick()  # the first request opens the first window
    return saturation


def _saturated(finish_rate: float) -> Saturation:
    """Saturated at ``finish_rate``, with a wall clock that never closes another window."""
    clocks = Clocks()
    saturation = _saturation(clocks)
    for _ in range(int(finish_rate * WINDOW_S)):
        saturation.finished()
    clocks.spend(WINDOW_S, WINDOW_S)
    saturation.tick()
    assert saturation.saturated and saturation.finish_rate == finish_rate
    return saturation


def test_the_first_window_opens_at_the_first_request_not_when_it_is_built() -> None:
    clocks = Clocks()
    saturation = Saturation(clock=lambda: clocks.wall, cpu_clock=lambda: clocks.cpu)
    # Built on another thread: the loop's thread reads its own CPU time, which has nothing to do with the
    # builder's. Judging a window from the build would see 5 cores busy.
    clocks.spend(WINDOW_S, 5 * WINDOW_S)
    saturation.tick()
    assert not saturation.saturated
    clocks.spend(2 * WINDOW_S, 2 * WINDOW_S)
    saturation.tick()
    assert saturation.saturated


def test_a_window_closes_after_its_length_with_the_loops_cpu_share_and_finish_rate() -> None:
    clocks = Clocks()
    saturation = _saturation(clocks)
    for _ in range(30):
        saturation.finished()
    clocks.spend(WINDOW_S / 2, WINDOW_S / 2)
    saturation.tick()
    assert not saturation.saturated and saturation.finish_rate == 0.0  # the window is still open
    clocks.spend(WINDOW_S / 2, WINDOW_S / 2)
    saturation.tick()
    assert saturation.saturated
    assert saturation.finish_rate == 30 / WINDOW_S
    clocks.spend(WINDOW_S, WINDOW_S * 0.5)  # half a core: the loop waits on something else
    saturation.tick()
    assert not saturation.saturated and saturation.finish_rate == 0.0


def test_a_saturated_gateway_refuses_once_the_requests_in_flight_take_the_deadlines_share() -> None:
    admission = Admission(4096, lag_share=0.25, saturation=_saturated(1000.0))
    admission.inflight = 24  # 24 ms to finish at 1,000 a second: under a quarter of 100 ms
    assert admission.refusal(post_scope("100")) is None
    admission.inflight = 25
    refusal = admission.refusal(post_scope("100"))
    assert refusal is not None and refusal.shed == "gateway_saturated"
    assert "25 requests" in refusal.reason and "about 25 ms" in refusal.reason
    assert "100 ms deadline" in refusal.reason
    assert admission.refusal(post_scope("1000")) is None  # a deadline that absorbs the wait


def test_a_gateway_that_is_not_saturated_refuses_nothing_for_its_requests_in_flight() -> None:
    clocks = Clocks()
    saturation = _saturation(clocks)
    clocks.spend(WINDOW_S, WINDOW_S / 10)
    saturation.tick()
    admission = Admission(4096, saturation=saturation)
    admission.inflight = 1000
    assert admission.refusal(post_scope("1")) is None


def test_a_stalled_finish_rate_still_admits_a_few_and_a_malformed_header_is_left_to_the_route() -> None:
    admission = Admission(4096, saturation=_saturated(0.0))
    admission.inflight = MIN_SATURATED_INFLIGHT - 1
    assert admission.refusal(post_scope("100")) is None
    admission.inflight = MIN_SATURATED_INFLIGHT
    assert admission.refusal(post_scope("100")) is not None
    assert admission.refusal(post_scope("soon")) is None


def test_the_middleware_refuses_with_503_and_counts_what_it_admitted_as_finished() -> None:
    saturation = _saturated(1000.0)
    admission = Admission(4096, lag_share=0.25, saturation=saturation)
    app = FastAPI()

    @app.post("/work")
    async def work() -> dict[str, bool]:
        return {"done": True}

    app.add_middleware(AdmissionMiddleware, admission=admission)

    async def calls() -> tuple[httpx.Response, httpx.Response]:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://gateway") as client:
            admission.inflight = 30  # as if 30 requests were being served
            refused = await client.post("/work", headers={"X-Request-Timeout-Ms": "100"})
            admission.inflight = 0
            admitted = await client.post("/work", headers={"X-Request-Timeout-Ms": "100"})
            return refused, admitted

    refused, admitted = asyncio.run(calls())
    assert refused.status_code == 503 and refused.headers["retry-after"] == "1"
    assert "CPU is saturated" in refused.json()["error"]
    assert admitted.status_code == 200
    assert admission.rejected == 1 and admission.inflight == 0
    assert saturation._finished == 1  # the admitted request, toward the next window's finish rate


def test_the_demand_clock_adds_runqueue_wait_to_run_time_and_falls_back_to_cpu_time(tmp_path: Path) -> None:
    schedstat = tmp_path / "schedstat"
    schedstat.write_text("3000000000 1500000000 42\n")  # run ns, runqueue wait ns, timeslices
    assert schedstat_clock(schedstat)() == 4.5
    assert schedstat_clock(tmp_path / "missing") is time.thread_time
    schedstat.write_text("garbled\n")
    assert schedstat_clock(schedstat) is time.thread_time
