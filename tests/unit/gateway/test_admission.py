"""Admission control: the in-flight bound, and refusing requests that would spend their deadline queueing."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx
import pytest
from fastapi import FastAPI

from tandem.gateway.admission import Admission, AdmissionMiddleware
from tandem.gateway.loop_lag import LoopLag
from tests.support.loop_lag import FixedLag
from tests.support.scopes import post_scope


def _admission(lag_s: float, **kwargs: float) -> Admission:
    return Admission(8, lag=FixedLag(lag_s), **kwargs)


def test_a_request_is_refused_when_the_lag_takes_more_than_its_share_of_the_deadline() -> None:
    admission = _admission(0.030, lag_share=0.25)
    refusal = admission.refusal(post_scope("100"))
    assert refusal is not None and refusal.shed == "gateway_loop_lag"
    assert "wait 30 ms" in refusal.reason and "100 ms deadline" in refusal.reason


def test_the_same_lag_is_admitted_for_a_deadline_that_absorbs_it() -> None:
    admission = _admission(0.030, lag_share=0.25)
    assert admission.refusal(post_scope("20000")) is None
    assert admission.refusal(post_scope("121")) is None


def test_without_a_header_the_default_deadline_is_the_budget() -> None:
    assert _admission(0.030, lag_share=0.25, default_budget_ms=100).refusal(post_scope()) is not None
    assert _admission(0.030, lag_share=0.25, default_budget_ms=1000).refusal(post_scope()) is None


def test_lag_under_the_floor_is_never_refused() -> None:
    admission = _admission(0.004, lag_share=0.01, lag_floor_s=0.005)
    assert admission.refusal(post_scope("1")) is None


def test_a_malformed_timeout_header_is_left_to_the_route_to_reject() -> None:
    assert _admission(0.5).refusal(post_scope("soon")) is None
    # The route's own bounds apply: out of range is the route's 400, not a lag refusal.
    assert _admission(0.5, max_budget_ms=30_000).refusal(post_scope("0")) is None
    assert _admission(0.5, max_budget_ms=30_000).refusal(post_scope("40000")) is None


def test_no_lag_monitor_refuses_nothing() -> None:
    assert Admission(8).refusal(post_scope("1")) is None


def _app(admission: Admission) -> FastAPI:
    app = FastAPI()

    @app.post("/work")
    async def work() -> dict[str, bool]:
        return {"done": True}

    @app.get("/v2/health/ready")
    async def ready() -> dict[str, bool]:
        return {"ready": True}

    app.add_middleware(AdmissionMiddleware, admission=admission)
    return app


def test_a_refusal_is_503_with_retry_after_and_a_reason_while_health_still_answers() -> None:
    admission = _admission(0.040, lag_share=0.25)

    async def calls() -> tuple[httpx.Response, ...]:
        transport = httpx.ASGITransport(app=_app(admission))
        async with httpx.AsyncClient(transport=transport, base_url="http://gateway") as client:
            return (
                await client.post("/work", headers={"X-Request-Timeout-Ms": "100"}),
                await client.post("/work", headers={"X-Request-Timeout-Ms": "5000"}),
                await client.get("/v2/health/ready"),
            )

    refused, admitted, health = asyncio.run(calls())
    assert refused.status_code == 503
    assert refused.headers["retry-after"] == "1"
    assert "overloaded" in refused.json()["error"]
    assert admitted.status_code == 200 and admitted.json() == {"done": True}
    assert health.status_code == 200
    assert admission.rejected == 1
    assert admission.inflight == 0


@asynccontextmanager
async def sampling(window_s: float) -> AsyncIterator[LoopLag]:
    """A lag monitor ticking every millisecond on the running loop, stopped at the end."""
    lag = LoopLag(tick_s=0.001, window_s=window_s)
    lag.start()
    try:
        yield lag
    finally:
        lag.stop()


@asynccontextmanager
async def arrivals(lag: LoopLag) -> AsyncIterator[None]:
    """Requests arriving every half millisecond (as admission notes them) for the block's duration."""

    async def arrive() -> None:
        while True:
            lag.note_arrival()
            await asyncio.sleep(0.0005)

    task = asyncio.create_task(arrive())
    try:
        yield
    finally:
        task.cancel()


async def _held_up(seconds: float) -> None:
    """Every loop round held up 15 ms, as when each poll finds more requests than the CPU can serve."""
    ends = time.monotonic() + seconds
    while time.monotonic() < ends:
        time.sleep(0.015)
        await asyncio.sleep(0)


def test_the_lag_monitor_reports_a_standing_queue_and_forgets_it_once_it_drains() -> None:
    async def scenario() -> LoopLag:
        async with sampling(window_s=0.02) as lag:
            await _held_up(0.3)
            assert lag.sustained_s >= 0.005
            await asyncio.sleep(0.005)  # the loop is idle again: the first tick on time clears it
            assert lag.sustained_s < 0.005
        return lag

    assert asyncio.run(scenario()).sustained_s == 0.0


def test_one_long_pause_is_not_a_standing_queue() -> None:
    async def scenario() -> None:
        async with sampling(window_s=0.05) as lag, arrivals(lag):  # requests keep coming: the sampler never sleeps
            await asyncio.sleep(0.03)
            time.sleep(0.1)  # one stall: the window it ends in had on-time ticks before it
            await asyncio.sleep(0.005)
            assert lag.sampling
            assert lag.sustained_s < 0.05

    asyncio.run(scenario())


def test_the_lag_monitor_sleeps_while_the_loop_is_idle_and_wakes_on_an_arrival() -> None:
    async def scenario() -> None:
        async with sampling(window_s=0.02) as lag:
            await asyncio.sleep(0.02)  # nothing arrives: one tick on time, then no timer until a request comes
            assert not lag.sampling and lag.sustained_s == 0.0
            async with arrivals(lag):
                await asyncio.sleep(0)
                assert lag.sampling
                await _held_up(0.2)
                assert lag.sustained_s >= 0.005
            await asyncio.sleep(0.02)  # the queue drains and arrivals stop: asleep again, no stale lag
            assert not lag.sampling and lag.sustained_s == 0.0
            lag.stop()
            lag.note_arrival()  # a stopped monitor stays stopped
            assert not lag.sampling

    asyncio.run(scenario())


@pytest.mark.parametrize(("share", "refused"), [(0.1, True), (0.5, False)])
def test_the_threshold_scales_with_the_share(share: float, refused: bool) -> None:
    # 40 ms of lag against a 100 ms deadline: over a 10 ms share, under a 50 ms one.
    assert (_admission(0.040, lag_share=share).refusal(post_scope("100")) is not None) is refused
