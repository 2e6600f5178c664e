"""Admission control: a bound on the requests one gateway process works on at once.

Past the bound a POST is refused at once with 503 and ``Retry-After`` instead of queueing work that would time
out; a refusal costs microseconds, so the gateway stays responsive under any overload. Health and metadata calls
are never refused. A pure ASGI middleware, so admitted requests pay one counter increment.
"""

from __future__ import annotations

import orjson
from starlette.types import ASGIApp, Receive, Scope, Send

from tandem.gateway import metrics

RETRY_AFTER_S = b"1"


class Admission:
    """Counts requests in flight against ``max_inflight``."""

    def __init__(self, max_inflight: int) -> None:
        self.max_inflight = max_inflight
        self.inflight = 0
        self.rejected = 0


class AdmissionMiddleware:
    """Refuses POSTs beyond ``admission.max_inflight`` with 503 and ``Retry-After``."""

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
            admission.rejected += 1
            metrics.SHED.labels("gateway_inflight").inc()
            await send(
                {
                    "type": "http.response.start",
                    "status": 503,
                    "headers": [
                        (b"content-type", b"application/json"),
                        (b"content-length", str(len(self._body)).encode()),
                        (b"retry-after", RETRY_AFTER_S),
                    ],
                }
            )
            await send({"type": "http.response.body", "body": self._body})
            return
        admission.inflight += 1
        try:
            await self.app(scope, receive, send)
        finally:
            admission.inflight -= 1
