"""Admission control: what one gateway process refuses at once rather than answer too late.

Two bounds, each answered with 503 and ``Retry-After`` instead of queueing work that would time out:

- the requests in flight in this process (``max_inflight``): work waiting on workers;
- the gateway's own queue, when its CPU is the bottleneck: requests then wait unseen in socket buffers, and the
  event loop's sustained lateness (``loop_lag.LoopLag``) is that wait. A POST is refused when the lag takes more
  than ``lag_share`` of the request's deadline (never below ``lag_floor_s``): such a request would spend its budget
  queueing, and refusing it costs a fraction of serving it, which leaves the CPU to requests that can still make
  their deadlines. A caller with a long deadline (a batch job, a closed-loop benchmark) is not refused for lag
  its deadline can absorb. The lag shows a queue only once one loop iteration has run the requests it read, and
  one iteration can admit hundreds: so while the loop's thread is CPU-bound (``saturation.Saturation``), a POST
  is also refused when the requests in flight would take more than ``lag_share`` of its deadline to finish at
  the rate the process finishes them (Little's law). Ranker at 2x load, 100 ms deadline, three interleaved
  rounds against the code before: goodput 94-508 -> 1,013-1,252 req/s.

Health and metadata calls are never refused. A pure ASGI middleware: an admitted request pays a counter
increment, a clock read and a few comparisons.

The HTTP protocol (``gateway/http_protocol.py``, which finds this ``Admission`` in the lifespan state under
``ADMISSION_STATE_KEY``) applies every bound as soon as it has parsed a POST's head: it answers a refusal itself,
in one write, without a task, the middleware chain, the request log line or tracing, and holds an admitted
request's place in flight from then on (``AdmittedApp``), so the heads one loop iteration parses are judged
against each other. Under overload refusals are most of the traffic, and what they cost is taken from the
requests still served. The middleware judges what the protocol did not: a pipelined request, or an app served
without this protocol.
"""

from __future__ import annotations

from dataclasses import dataclass

import orjson
from starlette.types import ASGIApp, Receive, Scope, Send

from tandem.common.errors import BadRequest
from tandem.common.metric_children import child
from tandem.gateway import metrics
from tandem.gateway.deadlines import TIMEOUT_HEADER, budget_from_header
from tandem.gateway.loop_lag import LoopLag
from tandem.gateway.saturation import Saturation

RETRY_AFTER_S = b"1"
ADMITTED_SCOPE_KEY = "tandem.admitted"
"""Set in a request's scope when the HTTP protocol admitted it and holds its place in flight (``AdmittedApp``)."""
ADMISSION_STATE_KEY = "tandem.admission"
"""Where the gateway's lifespan state holds its ``Admission`` for the HTTP protocol to find."""
_TIMEOUT_HEADER = TIMEOUT_HEADER.encode()
_MS_PER_S = 1000.0
MIN_SATURATED_INFLIGHT = 8
"""Requests a saturated gateway process always admits (``Admission._waits_to_judge``)."""


@dataclass(frozen=True, slots=True)
class Refusal:
    """Why a request is refused, and the ``tandem_shed_total`` reason it counts as."""

    reason: str
    shed: str


class Admission:
    """Counts requests in flight against ``max_inflight`` and judges the event loop's lag against deadlines."""

    def __init__(
        self,
        max_inflight: int,
        *,
        lag: LoopLag | None = None,
        lag_share: float = 0.25,
        lag_floor_s: float = 0.005,
        default_budget_ms: float = 1000.0,
        max_budget_ms: float = 30_000.0,
        saturation: Saturation | None = None,
    ) -> None:
        self.max_inflight = max_inflight
        self.inflight = 0
        self.rejected = 0
        self.lag = lag
        self.lag_share = lag_share
        self.lag_floor_s = lag_floor_s
        self.default_budget_ms = default_budget_ms
        self.max_budget_ms = max_budget_ms
        self.saturation = saturation
        self.inflight_refusal = Refusal(
            f"gateway is at its limit of {max_inflight} requests in flight; retry shortly", "gateway_inflight"
        )

    def refusal(self, scope: Scope) -> Refusal | None:
        """Why a POST with ``scope`` is refused (requests in flight, then the gateway's queue); None when admitted."""
        if self.inflight >= self.max_inflight:
            return self.inflight_refusal
        waits = self._waits_to_judge()
        if waits is None:  # the common case: no header scan
            return None
        return self._refusal(*waits, next((v for name, v in scope["headers"] if name == _TIMEOUT_HEADER), None))

    def refusal_for(self, header: bytes | None) -> Refusal | None:
        """``refusal`` for a POST whose ``X-Request-Timeout-Ms`` header is ``header`` (None: absent)."""
        if self.inflight >= self.max_inflight:
            return self.inflight_refusal
        waits = self._waits_to_judge()
        return None if waits is None else self._refusal(*waits, header)

    def finished(self) -> None:
        """An admitted request is answered: its place in flight is free, and it counts towards the finish rate."""
        self.inflight -= 1
        if self.saturation is not None:
            self.saturation.finished()

    def _waits_to_judge(self) -> tuple[float | None, Saturation | None] | None:
        """The two measures of the gateway's queue worth judging, or None when neither is (no header is parsed).

        The loop's sustained lag (``_lag_to_judge``), and while the loop is CPU-bound, its ``Saturation``: the
        requests in flight take ``inflight / finish_rate`` to finish (Little's law). At least
        ``MIN_SATURATED_INFLIGHT`` are always admitted, so a stalled rate never refuses everything.
        """
        lag_s = self._lag_to_judge()
        saturation = self.saturation
        if saturation is not None:
            saturation.tick()
            if not saturation.saturated or self.inflight < MIN_SATURATED_INFLIGHT:
                saturation = None
        return None if lag_s is None and saturation is None else (lag_s, saturation)

    def _refusal(self, lag_s: float | None, saturation: Saturation | None, header: bytes | None) -> Refusal | None:
        """Each wait judged against ``lag_share`` of the request's deadline."""
        try:
            budget_ms = budget_from_header(header, default_ms=self.default_budget_ms, max_ms=self.max_budget_ms)
        except BadRequest:
            return None  # admitted: the route answers 400, naming the header
        allowed_s = self.lag_share * budget_ms / _MS_PER_S
        deadline = f"more than {self.lag_share:.0%} of this request's {budget_ms:g} ms deadline; retry shortly"
        if lag_s is not None and lag_s > allowed_s:
            reason = f"gateway is overloaded: requests wait {lag_s * _MS_PER_S:.0f} ms before it reads them, {deadline}"
            return Refusal(reason, "gateway_loop_lag")
        if saturation is not None and self.inflight >= allowed_s * saturation.finish_rate:
            drain_ms = self.inflight / max(saturation.finish_rate, 1.0) * _MS_PER_S
            reason = (
                f"gateway is overloaded: its CPU is saturated, and the {self.inflight} requests it holds would take"
                f" about {drain_ms:.0f} ms to finish, {deadline}"
            )
            return Refusal(reason, "gateway_saturated")
        return None

    def _lag_to_judge(self) -> float | None:
        """The loop's sustained lag, read once, or None when it is too small to refuse anything for."""
        if self.lag is None:
            return None
        self.lag.note_arrival()
        wait_s = self.lag.sustained_s
        return wait_s if wait_s > self.lag_floor_s else None


class AdmissionMiddleware:
    """Refuses POSTs past ``admission``'s bounds with 503 and ``Retry-After``."""

    def __init__(self, app: ASGIApp, admission: Admission) -> None:
        self.app = app
        self.admission = admission

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST" or ADMITTED_SCOPE_KEY in scope:
            await self.app(scope, receive, send)
            return
        admission = self.admission
        refusal = admission.refusal(scope)
        if refusal is not None:
            _count_shed(admission, refusal)
            await send_refusal(send, orjson.dumps({"error": refusal.reason}))
            return
        admission.inflight += 1
        try:
            await self.app(scope, receive, send)
        finally:
            admission.finished()


async def send_refusal(send: Send, body: bytes) -> None:
    """Answer 503 with ``Retry-After`` and the JSON ``body``."""
    await send(
        {
            "type": "http.response.start",
            "status": 503,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                (b"retry-after", RETRY_AFTER_S),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


class AdmittedApp:
    """Runs ``app`` for a request the HTTP protocol admitted, holding its place in flight until the app returns.

    The protocol counts a request in flight as soon as its head is parsed: one loop iteration can parse hundreds
    of heads before any of their tasks runs, and each must be judged against those before it. The middleware
    sees ``ADMITTED_SCOPE_KEY`` and neither judges nor counts it again.
    """

    def __init__(self, admission: Admission, app: ASGIApp) -> None:
        self.admission = admission
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        scope[ADMITTED_SCOPE_KEY] = True  # type: ignore[literal-required]
        try:
            await self.app(scope, receive, send)
        finally:
            self.admission.finished()


def count_refusal(admission: Admission, refusal: Refusal) -> None:
    """Count a refusal answered before the app: as the admission middleware counts its own, and the answer that
    ``MetricsMiddleware`` would have counted had it seen it."""
    _count_shed(admission, refusal)
    child(metrics.REQUESTS, metrics.UNMATCHED_ROUTE, "", "", "503").inc()


def _count_shed(admission: Admission, refusal: Refusal) -> None:
    admission.rejected += 1
    child(metrics.SHED, refusal.shed).inc()
