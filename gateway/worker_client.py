"""The gateway's link to its workers: one ZeroMQ DEALER per worker, pings, routing and retries.

Ownership: everything here runs on the gateway's event loop thread. Each ``WorkerLink``'s socket is read by a
``SocketReader`` (replies resolve futures in the ``PendingReplies`` table; pongs refresh the worker's state), and
so is its monitor socket (a TCP disconnect marks the worker down at once, so a SIGKILLed worker's requests fail
over immediately instead of waiting for their deadline). One ping task pings every worker and marks down any
worker silent for longer than ``silence_s`` (a hung process keeps its TCP connection open).

Sockets use ``ZMQ_IMMEDIATE`` so that nothing queues towards a worker that is not connected: a send then fails
at once and the request goes elsewhere, and no stale request reaches a worker when it comes back.

Routing is power of two choices on outstanding requests. A request races at most two attempts: the first, and a
hedge sent to another, idle-enough worker when the first is slower than the hedge delay (``hedging.HedgePolicy``).
For a hedged model, a worker that holds requests but has answered none of them for longer than the hedge delay is
stalled ("latency-induced probation" in The Tail at Scale): routing passes it over while another worker can take
the request, and its requests may hedge on the budget's reserve. A worker that is merely busy keeps answering,
so overload alone never marks one stalled.
The first good answer wins; the other attempt is cancelled (a ``cancel`` message lets its worker drop it if still
queued) and its late reply is dropped by the pending table. An attempt lost with its worker is retried on another
worker while the deadline allows; the caller gets exactly one answer. A worker's ``overloaded`` refusal is retried
only on a worker with no more of this gateway's requests outstanding than the refusing one has left: under
overload every worker is as busy, and a retry would only double each refusal's cost and latency (the SRE book's
"retry amplification"); routing already chose the less loaded worker.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Callable, Hashable, Iterable
from dataclasses import dataclass
from typing import Any

import zmq
from opentelemetry.trace import Span, StatusCode
from zmq.utils.monitor import parse_monitor_message

from tandem.common import wire
from tandem.common.curve import CurveClientConfig, secure_client
from tandem.common.errors import DeadlineExceeded, ModelUnavailable, NotFound, Overloaded
from tandem.common.metric_children import child
from tandem.common.send_queue import SendQueue
from tandem.common.socket_reader import SocketReader
from tandem.common.tracing import inject, tracer
from tandem.common.wire import Cancel, InferRequest, Ping, Pong, Reply, WireError
from tandem.gateway import metrics
from tandem.gateway.deadlines import Deadline
from tandem.gateway.hedging import HedgePolicy
from tandem.gateway.pending import PendingReplies, WorkerLost

log = logging.getLogger("tandem.gateway.workers")
_TRACER = tracer("tandem.gateway")

SEND_HWM = 100_000
DEFAULT_HEDGE_MAX_QUEUED_ROWS = 16
_MONITORED_EVENTS = zmq.EVENT_CONNECTED | zmq.EVENT_DISCONNECTED
_MS_PER_S = 1000.0

LinkCallback = Callable[["WorkerLink", list[zmq.Frame]], None]
UnsentCallback = Callable[["WorkerLink", Hashable], None]


class WorkerLink:
    """One worker endpoint: its socket and what its last pong said."""

    def __init__(
        self,
        endpoint: str,
        context: zmq.Context,
        curve: CurveClientConfig | None = None,
        *,
        on_message: LinkCallback,
        on_monitor: LinkCallback,
        on_unsent: UnsentCallback,
    ) -> None:
        self.endpoint = endpoint
        self.socket: zmq.Socket = context.socket(zmq.DEALER)
        secure_client(self.socket, curve)  # CURVE when configured (None: plain TCP)
        self.socket.setsockopt(zmq.IMMEDIATE, 1)
        self.socket.setsockopt(zmq.LINGER, 0)
        self.socket.setsockopt(zmq.SNDHWM, SEND_HWM)
        self.socket.setsockopt(zmq.RCVHWM, SEND_HWM)
        self.monitor: zmq.Socket = self.socket.get_monitor_socket(_MONITORED_EVENTS)
        self.socket.connect(endpoint)
        self.reader = SocketReader(self.socket, lambda frames: on_message(self, frames), name=f"worker {endpoint}")
        self.monitor_reader = SocketReader(
            self.monitor, lambda frames: on_monitor(self, frames), name=f"monitor of {endpoint}"
        )
        self.sender = SendQueue(
            self.socket, after_send=self.reader.after_send, on_unsent=lambda token: on_unsent(self, token)
        )
        self.alive = False
        self.ready = False
        self.last_pong_at = float("-inf")
        # When it last showed progress: its latest reply, or when it went from idle to busy.
        self.progress_at = 0.0
        self.worker_id = ""
        self.queued_rows = 0
        self.reported_inflight = 0  # requests the worker held at its last pong, cancelled ones still computing too
        self.expected_wait_ms = 0.0
        self.models: list[dict[str, Any]] = []

    def serves(self, model: str, version: str | None) -> bool:
        """True when this worker's last pong listed ``model`` (at ``version``, when given: a version or an alias)."""
        return any(
            m.get("name") == model
            and (
                version is None
                or m.get("version") == version
                or (isinstance(m.get("aliases"), list) and version in m["aliases"])
            )
            for m in self.models
        )

    def start(self) -> None:
        """Read both sockets on the running loop."""
        self.reader.start()
        self.monitor_reader.start()

    def close(self) -> None:
        """Stop reading and close both sockets without waiting for unsent messages."""
        self.reader.stop()
        self.monitor_reader.stop()
        self.monitor.close(linger=0)
        self.socket.close(linger=0)


@dataclass(slots=True)
class _Attempt:
    """One copy of a request in flight on one worker, and its trace span."""

    attempt_id: str
    link: WorkerLink
    hedge: bool
    span: Span
    sent_at: float

    def end(self, error: BaseException | None = None, *, cancelled: bool = False) -> None:
        if cancelled:
            self.span.set_attribute("tandem.cancelled", True)
        elif error is not None:
            self.span.set_status(StatusCode.ERROR, str(error))
        self.span.end()


class WorkerPool:
    """Routes requests to the least-loaded live worker that serves the model, failing over when one dies."""

    def __init__(
        self,
        endpoints: Iterable[str],
        *,
        ping_interval_s: float,
        silence_s: float,
        hedging: HedgePolicy | None = None,
        hedge_max_queued_rows: int = DEFAULT_HEDGE_MAX_QUEUED_ROWS,
        curve: CurveClientConfig | None = None,
        reply_delay_s: Callable[[], float] | None = None,
    ) -> None:
        """``reply_delay_s``, when given, says how long a reply now waits in this gateway before it is read (its
        event loop's lag): it is taken off the budget a worker is sent, so the worker admits only what it can
        answer in time for the gateway to read the answer before the deadline.
        """
        self._context = zmq.Context()
        self._reply_delay_s = reply_delay_s
        self._links: list[WorkerLink] = []
        self._pending = PendingReplies()
        self._ping_interval_s = ping_interval_s
        self._silence_s = silence_s
        self._tasks: list[asyncio.Task[None]] = []
        self._ping_seq = 0
        self._initial = list(endpoints)
        self.hedging = hedging
        self._hedge_max_queued_rows = hedge_max_queued_rows
        self._curve = curve
        self.retries = 0
        self._models_table: dict[str, dict[str, dict[str, Any]]] | None = None  # models(), until a pong changes it

    @property
    def links(self) -> list[WorkerLink]:
        """Every known worker, live or not."""
        return list(self._links)

    @property
    def endpoints(self) -> list[str]:
        """The endpoints of every known worker."""
        return [link.endpoint for link in self._links]

    async def start(self) -> None:
        """Start receiving, monitoring and pinging; returns at once (workers are found by their pongs)."""
        for endpoint in self._initial:
            self.add_endpoint(endpoint)
        self._tasks.append(asyncio.create_task(self._ping_forever(), name="ping workers"))

    def add_endpoint(self, endpoint: str) -> None:
        """Connect to another worker (discovery found it); no-op when already known."""
        if endpoint in self.endpoints:
            return
        link = WorkerLink(
            endpoint, self._context, self._curve,
            on_message=self._on_message, on_monitor=self._on_monitor, on_unsent=self._on_unsent,
        )  # fmt: skip
        self._links.append(link)
        link.start()
        log.info("connecting to worker %s", endpoint)

    async def remove_endpoint(self, endpoint: str) -> None:
        """Forget a worker (discovery lost it); its requests in flight are retried elsewhere."""
        for link in self._links:
            if link.endpoint == endpoint:
                self._links.remove(link)
                self._mark_down(link, "removed by discovery")
                self._stop_link(link)
                log.info("disconnected from worker %s", endpoint)
                return

    def _stop_link(self, link: WorkerLink) -> None:
        self._pending.fail_worker(link, "gateway is shutting down")
        link.close()

    async def close(self) -> None:
        """Stop every task, fail what is in flight and close the sockets."""
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        for link in list(self._links):
            self._stop_link(link)
        self._links.clear()
        self._context.term()

    async def wait_ready(self, timeout_s: float) -> bool:
        """Wait until some worker is ready (for tests and start-up scripts)."""
        deadline = time.monotonic() + timeout_s
        while not self.ready:
            if time.monotonic() > deadline:
                return False
            await asyncio.sleep(self._ping_interval_s / 2)
        return True

    @property
    def ready(self) -> bool:
        """True when at least one worker is live and has its models loaded."""
        return any(link.alive and link.ready for link in self._links)

    def models(self) -> dict[str, dict[str, dict[str, Any]]]:
        """The models live workers serve: name -> version -> metadata (as the first worker described it).

        ``aliases`` is the union of the aliases live workers serve that version under: during a rollout two
        versions may both list an alias, until every worker has swapped.
        """
        if self._models_table is not None:
            return self._models_table
        table: dict[str, dict[str, dict[str, Any]]] = {}
        for link in self._links:
            if not link.alive:
                continue
            for model in link.models:
                listed = model.get("aliases")
                aliases = [a for a in listed if isinstance(a, str)] if isinstance(listed, list) else []
                entry = table.setdefault(model["name"], {}).setdefault(str(model["version"]), {**model, "aliases": []})
                entry["aliases"] = sorted({*entry["aliases"], *aliases})
        self._models_table = table
        return table

    def check_served(self, model: str, version: str | None) -> str | None:
        """The served version ``version`` names (None when none is asked for): itself, or the version an alias
        points to, as workers resolve either; during a rollout two versions may list an alias, and the newer is
        given. Raises ``NotFound`` for what no live worker serves, ``ModelUnavailable`` if none is live."""
        if not any(link.alive for link in self._links):
            raise ModelUnavailable("no worker is available")
        versions = self.models().get(model)
        if versions is None:
            raise NotFound(f"model {model!r} is not served")
        if version is None or version in versions:
            return version
        aliased = [number for number, entry in versions.items() if version in entry.get("aliases", ())]
        if not aliased:
            names = sorted({*versions, *(alias for entry in versions.values() for alias in entry.get("aliases", ()))})
            raise NotFound(f"model {model!r} has no version or alias {version!r}; served: {names}")
        return max(aliased, key=version_order)

    def pick(self, model: str, version: str | None, exclude: set[WorkerLink]) -> WorkerLink | None:
        """A live, ready worker serving the model: of two chosen at random, the one with fewer requests in flight.

        Power of two choices: nearly as good as the least-loaded worker, without herding every gateway onto it.
        Stalled workers are chosen only when no other worker can take the request.
        """
        eligible = [
            link
            for link in self._links
            if link not in exclude and link.alive and link.ready and link.serves(model, version)
        ]
        if len(eligible) > 1:
            stall_after_s = self._stall_after_s(model)
            if stall_after_s is not None:
                now = time.monotonic()
                flowing = [link for link in eligible if not self._stalled(link, stall_after_s, now)]
                eligible = flowing or eligible
        if len(eligible) <= 1:
            return eligible[0] if eligible else None
        first, second = random.sample(eligible, 2)
        return first if self._load(first) <= self._load(second) else second

    def _load(self, link: WorkerLink) -> int:
        return self._pending.outstanding(link)

    def _stall_after_s(self, model: str) -> float | None:
        """How long without an answer makes a busy worker stalled, for ``model``: its hedge delay, if hedged."""
        if self.hedging is None or not self.hedging.enabled_for(model):
            return None
        return self.hedging.delay_s(model)

    def _busy(self, link: WorkerLink) -> bool:
        """True when ``link`` holds work: ours in flight, or (per a pong newer than its last answer) any at all.

        The pong counts what a hedge left behind: a cancelled request still computing in a stalled batch.
        """
        if self._pending.outstanding(link):
            return True
        return link.reported_inflight > 0 and link.last_pong_at > link.progress_at

    def _stalled(self, link: WorkerLink, after_s: float, now: float) -> bool:
        """True when ``link`` holds work and has shown no progress for longer than ``after_s``."""
        return now - link.progress_at > after_s and self._busy(link)

    def _may_retry_overloaded(self, request: InferRequest, refused: WorkerLink, tried: set[WorkerLink]) -> bool:
        """True when another worker could take a request ``refused`` was too busy for (module docstring)."""
        other = self.pick(request.model, request.version, tried)
        return other is not None and self._load(other) <= self._load(refused)

    def _hedge_target(self, request: InferRequest, busy: set[WorkerLink]) -> WorkerLink | None:
        """Another worker for a hedge, only if it is idle enough: hedging into a busy worker only adds load."""
        link = self.pick(request.model, request.version, busy)
        if link is None or link.queued_rows > self._hedge_max_queued_rows:
            return None
        return link

    async def infer(self, request: InferRequest, deadline: Deadline) -> Reply:
        """Send ``request`` to a worker and return the first reply; hedges and retries as described above.

        The reply may carry an error status; the caller turns it into an exception. Raises
        ``DeadlineExceeded`` when the deadline passes first and ``ModelUnavailable`` when no worker is left.
        """
        hedging = self.hedging if self.hedging is not None and self.hedging.enabled_for(request.model) else None
        if hedging is not None:
            hedging.on_request()
        tried: set[WorkerLink] = set()
        attempts: dict[asyncio.Future[Reply], _Attempt] = {}
        may_hedge = hedging is not None
        hedged_from_stall: bool | None = None  # once a hedge is sent: whether its first attempt was stalled
        first_sent_at = 0.0
        next_hedge_check_s = 0.0  # after first_sent_at
        try:
            while True:
                if not attempts:
                    link = self._send_attempt(request, deadline, tried, attempts, hedge=False)
                    if not first_sent_at:
                        first_sent_at = time.monotonic()
                remaining_s = deadline.remaining_s()
                if remaining_s <= 0:
                    raise _deadline_error(deadline)
                timeout_s = remaining_s
                hedge_delay_s = hedging.delay_s(request.model) if may_hedge and hedging is not None else None
                if hedge_delay_s is not None:
                    next_hedge_check_s = max(next_hedge_check_s, hedge_delay_s)
                    timeout_s = min(timeout_s, max(0.0, first_sent_at + next_hedge_check_s - time.monotonic()))
                done, _ = await asyncio.wait(attempts, timeout=timeout_s, return_when=asyncio.FIRST_COMPLETED)
                if not done:
                    if hedge_delay_s is not None and hedging is not None and not deadline.expired:
                        # Not hedged now (no idle worker, or only the reserve left): look again one delay later,
                        # since the worker holding it may stall in the meantime.
                        next_hedge_check_s += hedge_delay_s
                        hedged_from_stall = self._try_hedge(request, deadline, tried, attempts, hedging, hedge_delay_s)
                        may_hedge = hedged_from_stall is None
                        continue
                    raise _deadline_error(deadline)
                for future in done:
                    attempt = attempts.pop(future)
                    link, was_hedge = attempt.link, attempt.hedge
                    error = future.exception()
                    attempt.end(error)
                    if isinstance(error, WorkerLost):
                        tried.add(link)
                        self.retries += 1
                        metrics.RETRIES.labels(request.model).inc()
                        continue
                    if error is not None:
                        raise error
                    reply = future.result()
                    others = tried | {link} | {other.link for other in attempts.values()}
                    if reply.status == Overloaded.code and (
                        attempts or self._may_retry_overloaded(request, link, others)
                    ):
                        tried.add(link)
                        self.retries += 1
                        metrics.RETRIES.labels(request.model).inc()
                        continue
                    if reply.ok:
                        child(metrics.WORKER_CALL_DURATION, request.model).observe(time.monotonic() - first_sent_at)
                        if was_hedge:
                            metrics.HEDGES_WON.labels(request.model, _trigger(hedged_from_stall)).inc()
                    if hedging is not None and hedged_from_stall is not None:
                        hedging.record_outcome(request.model, stalled=hedged_from_stall, won=was_hedge)
                    if hedging is not None and reply.ok:
                        # The answering attempt's own latency, not the request's: a hedged request's latency
                        # (delay + the hedge's) would raise the delay it is itself measured against.
                        hedging.observe(request.model, time.monotonic() - attempt.sent_at)
                        if was_hedge:
                            hedging.hedges_won += 1
                    return reply
        finally:
            for attempt in attempts.values():
                attempt.end(cancelled=True)
                self._pending.discard(attempt.attempt_id)
                self._send_quietly(attempt.link, Cancel(attempt.attempt_id))

    def _try_hedge(
        self,
        request: InferRequest,
        deadline: Deadline,
        tried: set[WorkerLink],
        attempts: dict[asyncio.Future[Reply], _Attempt],
        hedging: HedgePolicy,
        stall_after_s: float,
    ) -> bool | None:
        """Send a hedge if it may pay, a worker is idle enough and the budget allows.

        Returns None when none was sent, else whether the first attempt's worker was stalled.
        """
        now = time.monotonic()
        stalled = any(self._stalled(attempt.link, stall_after_s, now) for attempt in attempts.values())
        if not hedging.worth_it(request.model, stalled=stalled):
            metrics.HEDGES_SKIPPED.labels(request.model, "not_paying").inc()
            return None
        busy = tried | {attempt.link for attempt in attempts.values()}
        target = self._hedge_target(request, busy)
        if target is None:
            metrics.HEDGES_SKIPPED.labels(request.model, "no_idle_worker").inc()
            return None
        if not hedging.try_spend(stalled=stalled):
            metrics.HEDGES_SKIPPED.labels(request.model, "budget").inc()
            return None
        self._send_attempt(request, deadline, tried, attempts, hedge=True, link=target)
        metrics.HEDGES.labels(request.model, _trigger(stalled)).inc()
        return stalled

    def _send_attempt(
        self,
        request: InferRequest,
        deadline: Deadline,
        tried: set[WorkerLink],
        attempts: dict[asyncio.Future[Reply], _Attempt],
        *,
        hedge: bool,
        link: WorkerLink | None = None,
    ) -> WorkerLink:
        """Send one attempt to ``link`` (or a picked worker) and register it; raises when none is left."""
        shed = False
        while True:
            if link is None:
                busy = tried | {other.link for other in attempts.values()}
                link = self.pick(request.model, request.version, busy)
            if link is None:
                if shed:
                    raise Overloaded(f"every worker for model {request.model!r} is too busy to answer in time")
                if tried:
                    raise ModelUnavailable(f"no worker could take model {request.model!r} right now")
                self.check_served(request.model, request.version)
                raise ModelUnavailable(f"no worker is ready for model {request.model!r}")
            remaining_ms = deadline.remaining_ms()
            if remaining_ms <= 0:
                raise _deadline_error(deadline)
            if link.expected_wait_ms > remaining_ms:
                # Its last pong says the queue alone outlasts this budget: shed here, in microseconds.
                child(metrics.SHED, "worker_queue_predicted").inc()
                tried.add(link)
                shed = True
                link = None
                continue
            if not self._busy(link):
                link.progress_at = time.monotonic()  # idle until now: its stall clock starts here
            attempt_id, future = self._pending.register(link)
            span = _TRACER.start_span(
                "tandem.worker_call",
                attributes={"tandem.model": request.model, "tandem.worker": link.endpoint, "tandem.hedge": hedge},
            )
            request.request_id = attempt_id
            request.budget_ms = remaining_ms
            if self._reply_delay_s is not None:
                request.budget_ms -= _MS_PER_S * self._reply_delay_s()
            request.trace = inject(span)
            # Encoded now: the request object is reused, with another id, by a hedge or a retry.
            frames = wire.encode(request)
            if self._pending.outstanding(link) > 1:
                # Others are in flight on this worker: send with the rest of this loop turn's requests
                # (common/send_queue.py). A message the socket refuses by then fails this attempt, retried.
                link.sender.defer(frames, attempt_id)
            elif not _send_now(link, frames):
                # Not connected (IMMEDIATE) or its queue is full: try another worker.
                self._pending.discard(attempt_id)
                span.end()
                tried.add(link)
                link = None
                continue
            attempts[future] = _Attempt(attempt_id, link, hedge, span, time.monotonic())
            return link

    def _send_quietly(self, link: WorkerLink, message: wire.Message) -> None:
        # A fire-and-forget send (ping, cancel) may fail when the worker is away; that is expected.
        with contextlib.suppress(zmq.ZMQError):
            _send_now(link, wire.encode(message))

    def _mark_down(self, link: WorkerLink, reason: str) -> None:
        self._models_table = None
        if link.alive:
            log.warning("worker %s (%s) is down: %s", link.endpoint, link.worker_id, reason)
        link.alive = False
        link.ready = False
        metrics.WORKERS_LIVE.set(sum(other.alive for other in self._links))
        failed = self._pending.fail_worker(link, f"worker {link.endpoint} went away: {reason}")
        if failed:
            log.warning("%d requests in flight on %s will be retried elsewhere", failed, link.endpoint)

    def _on_pong(self, link: WorkerLink, pong: Pong) -> None:
        self._models_table = None
        if not link.alive:
            log.info("worker %s (%s) is up, ready=%s", link.endpoint, pong.worker_id, pong.ready)
            link.alive = True
            metrics.WORKERS_LIVE.set(sum(other.alive for other in self._links))
        link.ready = pong.ready
        link.last_pong_at = time.monotonic()
        link.worker_id = pong.worker_id
        link.queued_rows = pong.queued_rows
        link.reported_inflight = pong.inflight
        link.expected_wait_ms = pong.expected_wait_ms
        link.models = [m for m in pong.models if isinstance(m, dict) and isinstance(m.get("name"), str)]

    def _on_message(self, link: WorkerLink, frames: list[zmq.Frame]) -> None:
        try:
            message = wire.decode(frames)
        except WireError as exc:
            log.warning("dropping a malformed message from %s: %s", link.endpoint, exc.message)
            return
        if isinstance(message, Reply):
            link.progress_at = time.monotonic()
            self._pending.resolve(message)
        elif isinstance(message, Pong):
            self._on_pong(link, message)

    def _on_unsent(self, link: WorkerLink, attempt_id: Hashable) -> None:
        """A deferred request the socket would not take when its turn came: fail it so it is retried elsewhere."""
        if isinstance(attempt_id, str):
            self._pending.fail(attempt_id, WorkerLost(f"worker {link.endpoint} could not take the request"))

    def _on_monitor(self, link: WorkerLink, frames: list[zmq.Frame]) -> None:
        event = parse_monitor_message([frame.bytes for frame in frames])
        if event["event"] == zmq.EVENT_DISCONNECTED:
            self._mark_down(link, "connection closed")

    async def _ping_forever(self) -> None:
        while True:
            self._ping_seq += 1
            now = time.monotonic()
            for link in self._links:
                if link.alive and now - link.last_pong_at > self._silence_s:
                    self._mark_down(link, f"no pong for {self._silence_s:g} s")
                self._send_quietly(link, Ping(self._ping_seq))
            await asyncio.sleep(self._ping_interval_s)


def version_order(version: str) -> tuple[int, str]:
    """Sort key: numbered registry versions by number, after any that are not numbers."""
    return (int(version), "") if version.isdigit() else (-1, version)


def _trigger(stalled: bool | None) -> str:
    return "stall" if stalled else "delay"


def _deadline_error(deadline: Deadline) -> DeadlineExceeded:
    return DeadlineExceeded(f"deadline of {deadline.budget_ms:g} ms exceeded before a worker answered")


def _send_now(link: WorkerLink, frames: list[wire.Buffer]) -> bool:
    """Send without blocking; False when the socket cannot take the message now (zmq.Again)."""
    try:
        link.sender.send(frames)
    except zmq.Again:
        return False
    return True
