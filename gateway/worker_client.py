"""The gateway's link to its workers: one ZeroMQ DEALER per worker, pings, routing and retries.

Ownership: everything here runs on the gateway's event loop thread. Each ``WorkerLink`` has a receive task
(replies resolve futures in the ``PendingReplies`` table; pongs refresh the worker's state) and a monitor task
(a TCP disconnect marks the worker down at once, so a SIGKILLed worker's requests fail over immediately
instead of waiting for their deadline). One ping task pings every worker and marks down any worker silent for
longer than ``silence_s`` (a hung process keeps its TCP connection open).

Sockets use ``ZMQ_IMMEDIATE`` so that nothing queues towards a worker that is not connected: a send then fails
at once and the request goes elsewhere, and no stale request reaches a worker when it comes back.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Iterable
from typing import Any

import zmq
import zmq.asyncio
from zmq.utils.monitor import parse_monitor_message

from tandem.common import wire
from tandem.common.errors import DeadlineExceeded, ModelUnavailable, NotFound, Overloaded
from tandem.common.wire import Cancel, InferRequest, Ping, Pong, Reply, WireError
from tandem.gateway.deadlines import Deadline
from tandem.gateway.pending import PendingReplies, WorkerLost

log = logging.getLogger("tandem.gateway.workers")

SEND_HWM = 100_000
_MONITORED_EVENTS = zmq.EVENT_CONNECTED | zmq.EVENT_DISCONNECTED
_MS_PER_S = 1000.0


class WorkerLink:
    """One worker endpoint: its socket and what its last pong said."""

    def __init__(self, endpoint: str, context: zmq.asyncio.Context) -> None:
        self.endpoint = endpoint
        self.socket: zmq.asyncio.Socket = context.socket(zmq.DEALER)
        self.socket.setsockopt(zmq.IMMEDIATE, 1)
        self.socket.setsockopt(zmq.LINGER, 0)
        self.socket.setsockopt(zmq.SNDHWM, SEND_HWM)
        self.socket.setsockopt(zmq.RCVHWM, SEND_HWM)
        self.monitor: zmq.asyncio.Socket = self.socket.get_monitor_socket(_MONITORED_EVENTS)
        self.socket.connect(endpoint)
        self.alive = False
        self.ready = False
        self.last_pong_at = float("-inf")
        self.worker_id = ""
        self.queued_rows = 0
        self.models: list[dict[str, Any]] = []

    def serves(self, model: str, version: str | None) -> bool:
        """True when this worker's last pong listed ``model`` (at ``version``, when given)."""
        return any(m.get("name") == model and (version is None or m.get("version") == version) for m in self.models)

    def close(self) -> None:
        """Close both sockets without waiting for unsent messages."""
        self.monitor.close(linger=0)
        self.socket.close(linger=0)


class WorkerPool:
    """Routes requests to the least-loaded live worker that serves the model, failing over when one dies."""

    def __init__(self, endpoints: Iterable[str], *, ping_interval_s: float, silence_s: float) -> None:
        self._context = zmq.asyncio.Context()
        self._links = [WorkerLink(endpoint, self._context) for endpoint in endpoints]
        self._pending = PendingReplies()
        self._ping_interval_s = ping_interval_s
        self._silence_s = silence_s
        self._tasks: list[asyncio.Task[None]] = []
        self._ping_seq = 0

    @property
    def links(self) -> list[WorkerLink]:
        """Every configured worker, live or not."""
        return list(self._links)

    async def start(self) -> None:
        """Start receiving, monitoring and pinging; returns at once (workers are found by their pongs)."""
        for link in self._links:
            self._tasks.append(asyncio.create_task(self._receive(link), name=f"recv {link.endpoint}"))
            self._tasks.append(asyncio.create_task(self._watch(link), name=f"monitor {link.endpoint}"))
        self._tasks.append(asyncio.create_task(self._ping_forever(), name="ping workers"))

    async def close(self) -> None:
        """Stop every task, fail what is in flight and close the sockets."""
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        for link in self._links:
            self._pending.fail_worker(link, "gateway is shutting down")
            link.close()
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
        """The models live workers serve: name -> version -> metadata (as the worker described it)."""
        table: dict[str, dict[str, dict[str, Any]]] = {}
        for link in self._links:
            if not link.alive:
                continue
            for model in link.models:
                table.setdefault(model["name"], {}).setdefault(str(model["version"]), model)
        return table

    def check_served(self, model: str, version: str | None) -> None:
        """Raise ``NotFound`` for a model (version) that no live worker serves, ``ModelUnavailable`` if none live."""
        if not any(link.alive for link in self._links):
            raise ModelUnavailable("no worker is available")
        versions = self.models().get(model)
        if versions is None:
            raise NotFound(f"model {model!r} is not served")
        if version is not None and version not in versions:
            raise NotFound(f"model {model!r} has no version {version!r}; served: {sorted(versions)}")

    def pick(self, model: str, version: str | None, exclude: set[WorkerLink]) -> WorkerLink | None:
        """The live, ready worker serving the model with the fewest requests in flight (ties at random)."""
        best: list[WorkerLink] = []
        best_load = None
        for link in self._links:
            if link in exclude or not (link.alive and link.ready) or not link.serves(model, version):
                continue
            load = self._pending.outstanding(link)
            if best_load is None or load < best_load:
                best, best_load = [link], load
            elif load == best_load:
                best.append(link)
        return random.choice(best) if best else None

    async def infer(self, request: InferRequest, deadline: Deadline) -> Reply:
        """Send ``request`` to a worker and return its reply; retries on another worker if one dies.

        The reply may carry an error status; the caller turns it into an exception. Raises
        ``DeadlineExceeded`` when the deadline passes first and ``ModelUnavailable`` when no worker is left.
        """
        tried: set[WorkerLink] = set()
        while True:
            link = self.pick(request.model, request.version, tried)
            if link is None:
                if tried:
                    raise ModelUnavailable(f"no worker could take model {request.model!r} right now")
                self.check_served(request.model, request.version)
                raise ModelUnavailable(f"no worker is ready for model {request.model!r}")
            remaining_ms = deadline.remaining_ms()
            if remaining_ms <= 0:
                raise DeadlineExceeded(f"deadline of {deadline.budget_ms:g} ms exceeded before a worker answered")
            attempt_id, future = self._pending.register(link)
            request.request_id = attempt_id
            request.budget_ms = remaining_ms
            try:
                await link.socket.send_multipart(wire.encode(request), flags=zmq.NOBLOCK, copy=False)
            except zmq.Again:
                # Not connected (IMMEDIATE) or its queue is full: try another worker.
                self._pending.discard(attempt_id)
                tried.add(link)
                continue
            try:
                reply = await asyncio.wait_for(future, remaining_ms / _MS_PER_S)
            except TimeoutError:
                self._pending.discard(attempt_id)
                self._send_quietly(link, Cancel(attempt_id))
                raise DeadlineExceeded(
                    f"deadline of {deadline.budget_ms:g} ms exceeded before a worker answered"
                ) from None
            except WorkerLost:
                tried.add(link)
                continue
            if reply.status == Overloaded.code and self.pick(request.model, request.version, tried | {link}):
                tried.add(link)
                continue
            return reply

    def _send_quietly(self, link: WorkerLink, message: wire.Message) -> None:
        try:
            future = link.socket.send_multipart(wire.encode(message), flags=zmq.NOBLOCK)
        except zmq.ZMQError:
            return
        future.add_done_callback(_consume_exception)

    def _mark_down(self, link: WorkerLink, reason: str) -> None:
        if link.alive:
            log.warning("worker %s (%s) is down: %s", link.endpoint, link.worker_id, reason)
        link.alive = False
        link.ready = False
        failed = self._pending.fail_worker(link, f"worker {link.endpoint} went away: {reason}")
        if failed:
            log.warning("%d requests in flight on %s will be retried elsewhere", failed, link.endpoint)

    def _on_pong(self, link: WorkerLink, pong: Pong) -> None:
        if not link.alive:
            log.info("worker %s (%s) is up, ready=%s", link.endpoint, pong.worker_id, pong.ready)
        link.alive = True
        link.ready = pong.ready
        link.last_pong_at = time.monotonic()
        link.worker_id = pong.worker_id
        link.queued_rows = pong.queued_rows
        link.models = [m for m in pong.models if isinstance(m, dict) and isinstance(m.get("name"), str)]

    async def _receive(self, link: WorkerLink) -> None:
        while True:
            frames = await link.socket.recv_multipart(copy=False)
            try:
                message = wire.decode(frames)
                if isinstance(message, Reply):
                    self._pending.resolve(message)
                elif isinstance(message, Pong):
                    self._on_pong(link, message)
            except WireError as exc:
                log.warning("dropping a malformed message from %s: %s", link.endpoint, exc.message)
            except Exception:
                log.exception("error handling a message from %s", link.endpoint)

    async def _watch(self, link: WorkerLink) -> None:
        while True:
            event = parse_monitor_message(await link.monitor.recv_multipart())
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


def _consume_exception(future: asyncio.Future[Any]) -> None:
    # A fire-and-forget send (ping, cancel) may fail when the worker is away; that is expected.
    if not future.cancelled():
        future.exception()
