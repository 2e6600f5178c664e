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

The lag and saturation bounds are also checked where the gateway's HTTP protocol has just parsed a request's
head (``gateway/http_protocol.py``, which finds this ``Admission`` in the lifespan state under
``ADMISSION_STATE_KEY``): a refusal there is answered by ``refusal_app`` without the middleware chain, request
log line or tracing, a fraction of what refusing inside the app costs. Under overload refusals are most of
the traffic, and what they cost is taken from the requests still served. Saturation checked there too, ranker
at 2x, six interleaved rounds: goodput 670-1,545 -> 1,162-2,342 req/s (better in five of six).
"""

from __future__ import annotations

import orjson
from starlette.types import ASGIApp, Receive, Scope, Send

from tandem.common.errors import BadRequest
from tandem.gateway import metrics
from tandem.gateway.deadlines import TIMEOUT_HEADER, budget_from_header
from tandem.gateway.loop_lag import LoopLag
from tandem.gateway.saturation import Saturation

RETRY_AFTER_S = b"1"
ADMISSION_STATE_KEY = "tandem.admission"
"""Where the gateway's lifespan state holds its ``Admission`` for the HTTP protocol to find."""
_TIMEOUT_HEADER = TIMEOUT_HEADER.encode()
_MS_PER_S = 1000.0
MIN_SATURATED_INFLIGHT = 8
"""Requests a saturated gateway process always admits (``Admission.saturation_refusal``)."""


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

    def lag_refusal(self, scope: Scope) -> str | None:
        """Why a request with ``scope``'s deadline is refused for the loop's lag; None when it is admitted."""
        wait_s = self._lag_to_judge()
        if wait_s is None:  # the common case: no header scan
            return None
        return self._lag_refusal(wait_s, next((v for name, v in scope["headers"] if name == _TIMEOUT_HEADER), None))

    def lag_refusal_for(self, header: bytes | None) -> str | None:
        """``lag_refusal`` for a request whose ``X-Request-Timeout-Ms`` header is ``header`` (None: absent)."""
        wait_s = self._lag_to_judge()
        return None if wait_s is None else self._lag_refusal(wait_s, header)

    def saturation_refusal(self, scope: Scope) -> str | None:
        """Why a request is refused while the event loop is CPU-bound; None when it is admitted.

        Saturated, the loop finishes admitted requests at ``finish_rate``; a newcomer then waits for about
        ``inflight / finish_rate`` (Little's law), which may take ``lag_share`` of its deadline. At least
        ``MIN_SATURATED_INFLIGHT`` are always admitted, so a stalled rate never refuses everything.
        """
        if self.saturation is None:
            return None
        return self.saturation_refusal_for(next((v for name, v in scope["headers"] if name == _TIMEOUT_HEADER), None))

    def saturation_refusal_for(self, header: bytes | None) -> str | None:
        """``saturation_refusal`` for a request whose ``X-Request-Timeout-Ms`` header is ``header`` (None: absent)."""
        saturation = self.saturation
        if saturation is None:
            return None
        saturation.tick()
        if not saturation.saturated or self.inflight < MIN_SATURATED_INFLIGHT:
            return None
        try:
            budget_ms = budget_from_header(header, default_ms=self.default_budget_ms, max_ms=self.max_budget_ms)
        except BadRequest:
            return None  # admitted: the route answers 400, naming the header
        if self.inflight < self.lag_share * budget_ms / _MS_PER_S * saturation.finish_rate:
            return None
        return (
            f"gateway is overloaded: its CPU is saturated, and the {self.inflight} requests it holds would take"
            f" about {self.inflight / max(saturation.finish_rate, 1.0) * _MS_PER_S:.0f} ms to finish, more than"
            f" {self.lag_share:.0%} of this request's {budget_ms:g} ms deadline; retry shortly"
        )

    def _lag_to_judge(self) -> float | None:
        """The loop's sustained lag, read once, or None when it is too small to refuse anything for."""
        if self.lag is None:
            return None
        wait_s = self.lag.sustained_s
        return wait_s if wait_s > self.lag_floor_s else None

    def _lag_refusal(self, wait_s: float, header: bytes | None) -> str | None:
        try:
            budget_ms = budget_from_header(header, default_ms=self.default_budget_ms, max_ms=self.max_budget_ms)
        except BadRequest:
            return None  # admitted: the route answers 400, naming the header
        if wait_s <= self.lag_share * budget_ms / _MS_PER_S:
            return None
        return (
            f"gateway is overloaded: requests wait {wait_s * _MS_PER_S:.0f} ms before it reads them,"
            f" more than {self.lag_share:.0%} of this request's {budget_ms:g} ms deadline; retry shortly"
        )


class AdmissionMiddleware:
    """Refuses POSTs past ``admission``'s bounds with 503 and ``Retry-After``."""

    def __init__(self, app: ASGIApp, admission: Admission) -> None:
        self.app = app
        self.admission = admission
        self._body = orjson.dumps(
            {"error": f"gateway is at its limit of {admission.max_inflight} requests in flight; retry shortly"}
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        admission = self.admission
        if admission.inflight >= admission.max_inflight:
            metrics.SHED.labels("gateway_inflight").inc()
            await self._refuse(send, self._body)
            return
        refusal = admission.lag_refusal(scope)
        if refusal is not None:
            metrics.SHED.labels("gateway_loop_lag").inc()
            await self._refuse(send, orjson.dumps({"error": refusal}))
            return
        refusal = admission.saturation_refusal(scope)
        if refusal is not None:
            metrics.SHED.labels("gateway_saturated").inc()
            await self._refuse(send, orjson.dumps({"error": refusal}))
            return
        admission.inflight += 1
        try:
            await self.app(scope, receive, send)
        finally:
            admission.inflight -= 1
            if admission.saturation is not None:
                admission.saturation.finished()

    async def _refuse(self, send: Send, body: bytes) -> None:
        self.admission.rejected += 1
        await send_refusal(send, body)


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


def refusal_app(admission: Admission, reason: str, shed_reason: str = "gateway_loop_lag") -> ASGIApp:
    """An ASGI app that refuses one request (``reason``), counted as the middleware counts refusals."""
    body = orjson.dumps({"error": reason})

    async def refuse(scope: Scope, receive: Receive, send: Send) -> None:
        admission.rejected += 1
        metrics.SHED.labels(shed_reason).inc()
        metrics.REQUESTS.labels(metrics.UNMATCHED_ROUTE, "", "", "503").inc()
        await send_refusal(send, body)

    return refuse
