"""The gateway's HTTP/1.1 protocol under uvicorn: httptools with a bound on the request head.

uvicorn's h11 protocol bounds a request's head (``h11_max_incomplete_event_size``), but its httptools
protocol, the fast one ``uvicorn[standard]`` runs by default, buffers a request line and headers of any size:
a client could send megabytes of headers and the gateway would hold them. ``BoundedHttpToolsProtocol`` answers
431 (with the gateway's JSON error body) and closes the connection once the head passes the limit, which it
reads from ``h11_max_incomplete_event_size``, so one uvicorn setting bounds both parsers
(``GatewaySettings.max_header_bytes``; see ``gateway/server.py``).

Two counters, neither of which can exceed the true size of the head, so a head within the limit is never
refused: the request line and every completed header as the parser reports them (exact), and the chunks read
while a head is incomplete at both ends of the chunk (a single endless header line is never reported as a
field until it ends). So memory stays within the limit plus two read chunks.

It also writes through a ``CoalescingTransport``, so a response's head and body leave in one write
(``gateway/coalescing_transport.py``), and applies the gateway's ``Admission`` (``gateway/admission.py``, found in
the lifespan state) as soon as a POST's head is parsed: a refusal (requests in flight, the event loop's lag or its
saturation) is answered here in one write, and an admitted request counts in flight from here on.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import httptools
import orjson
from uvicorn.config import Config
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol, RequestResponseCycle
from uvicorn.server import ServerState

from tandem.gateway.admission import ADMISSION_STATE_KEY, RETRY_AFTER_S, Admission, AdmittedApp, Refusal, count_refusal
from tandem.gateway.coalescing_transport import CoalescingTransport
from tandem.gateway.deadlines import TIMEOUT_HEADER

DEFAULT_MAX_HEAD_BYTES = 16 * 1024
HEAD_TOO_LARGE = 431
_FIELD_OVERHEAD_BYTES = 4  # ": " and CRLF of each header line
_TIMEOUT_HEADER = TIMEOUT_HEADER.lower().encode()
_POST = b"POST"
SERVICE_UNAVAILABLE = 503


class HeadTooLarge(httptools.HttpParserError):
    """Raised from a parser callback; httptools reports it as a parser error, which uvicorn answers."""


class BoundedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol, answering 431 for a request head over the configured size."""

    def __init__(
        self,
        config: Config,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        super().__init__(config, server_state, app_state, _loop)
        self.max_head_bytes = config.h11_max_incomplete_event_size or DEFAULT_MAX_HEAD_BYTES
        self._in_head = False
        self._field_bytes = 0
        self._chunk_bytes = 0
        self._too_large = False
        self._timeout_header: bytes | None = None
        self._admission: Admission | None = app_state.get(ADMISSION_STATE_KEY)
        self._admitted_app = None if self._admission is None else AdmittedApp(self._admission, self.app)
        self._idle_since: float | None = None
        """When the last response completed with no request after it; None while a request is being served."""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        """Take the connection, writing through a ``CoalescingTransport`` (one write per response)."""
        super().connection_made(transport)
        self.transport = CoalescingTransport(transport, self.loop)  # type: ignore[assignment]

    def on_response_complete(self) -> None:
        """uvicorn's, with a lazy keep-alive timer: one per idle stretch, not one armed and cancelled per request.

        uvicorn arms a ``call_later`` timer after every response and cancels it on the next request's first
        bytes: a timer object, a heap push and a cancellation per request, which under load cost as much as
        writing the response. Here a response only notes the time; the timer, when it fires, closes the
        connection if it has been idle for the whole timeout, and otherwise waits out the rest.
        """
        self.server_state.total_requests += 1
        if self.transport.is_closing():
            return
        self.flow.resume_reading()
        if self.pipeline:
            cycle, app = self.pipeline.pop()
            self._start_asgi_task(cycle, app)
            return
        self._idle_since = self.loop.time()
        if self.timeout_keep_alive_task is None:
            self.timeout_keep_alive_task = self.loop.call_later(self.timeout_keep_alive, self._keep_alive_check)

    def _unset_keepalive_if_required(self) -> None:
        # New bytes arrived (or the connection went): busy. An armed timer stays; it finds the connection busy.
        self._idle_since = None

    def _keep_alive_check(self) -> None:
        self.timeout_keep_alive_task = None
        if self._idle_since is None:
            return  # serving a request: the response arms the timer again
        idle_s = self.loop.time() - self._idle_since
        if idle_s >= self.timeout_keep_alive:
            self.timeout_keep_alive_handler()
        else:
            self.timeout_keep_alive_task = self.loop.call_later(
                self.timeout_keep_alive - idle_s, self._keep_alive_check
            )

    def connection_lost(self, exc: Exception | None) -> None:
        """uvicorn's, and the keep-alive timer goes with the connection."""
        if self.timeout_keep_alive_task is not None:
            self.timeout_keep_alive_task.cancel()
            self.timeout_keep_alive_task = None
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        """Feed the parser; count the chunk when it lies wholly inside one incomplete head."""
        if self._too_large:  # answered already; the connection is closing
            return
        inside_before = self._in_head
        super().data_received(data)
        if self._too_large or not (inside_before and self._in_head):
            return
        self._chunk_bytes += len(data)
        if self._chunk_bytes > self.max_head_bytes:
            self._too_large = True
            self.send_400_response("")

    def on_message_begin(self) -> None:
        """A new request: its head starts."""
        super().on_message_begin()
        self._in_head = True
        self._field_bytes = self._chunk_bytes = 0
        self._timeout_header = None

    def on_url(self, url: bytes) -> None:
        """Count the request target (it may arrive in pieces)."""
        self._count(len(url))
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        """Count a completed header line."""
        self._count(len(name) + len(value) + _FIELD_OVERHEAD_BYTES)
        if len(name) == len(_TIMEOUT_HEADER) and name.lower() == _TIMEOUT_HEADER:
            self._timeout_header = value.strip()
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        """The head ended within the limit: refuse it here if admission says so, else serve it, counted in flight."""
        self._in_head = False
        admission = self._admission
        if admission is None or self.parser.get_method() != _POST:
            super().on_headers_complete()
            return
        previous = self.cycle
        if previous is not None and not previous.response_complete:
            # Pipelined behind a request still being answered: it waits for that one, and the admission middleware
            # judges it when it starts, so that its answer keeps its place in the order.
            super().on_headers_complete()
            return
        refusal = admission.refusal_for(self._timeout_header)
        if refusal is not None:
            self._refuse_in_place(admission, refusal)
            return
        # Counted in flight from now, so the heads parsed after it in this loop iteration are judged with it.
        # The app releases the place when it returns; a head uvicorn does not start a task for (a bad URL raises
        # here, an upgrade is handed over) releases it at once.
        admission.inflight += 1
        started = False
        try:
            self._serve(self._admitted_app)
            started = self.cycle is not previous
        finally:
            if not started:
                admission.inflight -= 1

    def _serve(self, app: Any) -> None:
        """uvicorn's own handling of a parsed head, running ``app`` for this request."""
        own, self.app = self.app, app
        try:
            super().on_headers_complete()
        finally:
            self.app = own

    def _refuse_in_place(self, admission: Admission, refusal: Refusal) -> None:
        """Answer 503 from here, written at once, for a request not pipelined behind an unanswered one.

        Under overload most requests are refused, in loop iterations that read hundreds of requests. Answered
        through an ASGI app, each refusal cost a task, its messages and a flush queued behind the whole next
        iteration; here it is one write, and the rest of the request (its body) is read and dropped, as uvicorn
        drops a body that arrives after its response is complete.
        """
        keep_alive = self.parser.get_http_version() != "1.0" and self.parser.should_keep_alive()
        self.cycle = cycle = RequestResponseCycle(
            scope=self.scope,
            transport=self.transport,
            flow=self.flow,
            logger=self.logger,
            access_logger=self.access_logger,
            access_log=self.access_log,
            default_headers=self.server_state.default_headers,
            message_event=asyncio.Event(),
            expect_100_continue=self.expect_100_continue,
            keep_alive=keep_alive,
            on_response=self.on_response_complete,
        )
        cycle.response_started = cycle.response_complete = True
        count_refusal(admission, refusal)
        self.transport.write(
            _json_error(SERVICE_UNAVAILABLE, refusal.reason, self.server_state.default_headers, keep_alive=keep_alive)
        )
        if keep_alive:
            self.transport.flush()  # type: ignore[attr-defined]  # a CoalescingTransport: send it in this iteration
        else:
            self.transport.close()
        self.on_response_complete()

    def _count(self, size: int) -> None:
        self._field_bytes += size
        if self._field_bytes > self.max_head_bytes:
            self._too_large = True
            raise HeadTooLarge(f"request head exceeds {self.max_head_bytes} bytes")

    def send_400_response(self, msg: str) -> None:
        """Answer a parser error as uvicorn does, or with a 431 and a JSON body when the head was too large."""
        if not self._too_large:
            super().send_400_response(msg)
            return
        if self.transport.is_closing():
            return
        reason = f"request line and headers exceed the limit of {self.max_head_bytes} bytes"
        self.transport.write(_json_error(HEAD_TOO_LARGE, reason, keep_alive=False))
        self.transport.close()


def _json_error(status: int, reason: str, headers: Sequence[tuple[bytes, bytes]] = (), *, keep_alive: bool) -> bytes:
    """A whole response answered from the protocol itself: ``status``, ``headers``, and the JSON error body.

    A 503 carries ``Retry-After``, as the admission middleware's refusals do.
    """
    body = orjson.dumps({"error": reason})
    parts = [STATUS_LINE[status], *(b"%s: %s\r\n" % pair for pair in headers)]
    parts.append(b"content-type: application/json\r\ncontent-length: %d\r\n" % len(body))
    if status == SERVICE_UNAVAILABLE:
        parts.append(b"retry-after: %s\r\n" % RETRY_AFTER_S)
    if not keep_alive:
        parts.append(b"connection: close\r\n")
    parts += [b"\r\n", body]
    return b"".join(parts)
