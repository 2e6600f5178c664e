"""The worker process: a ZeroMQ ROUTER socket in front of the adaptive batcher and one inference thread.

Who owns what:

- The asyncio event loop thread owns the ROUTER socket (read by a ``SocketReader``), decoding, admission (resolve,
  validate, offer to the batcher), the batcher, the model slots, the counters and every reply. Only this thread
  touches the socket.
- One inference thread (``ThreadPoolExecutor(max_workers=1)``) runs ``run_batch`` and ``retire``: the only code
  that touches a module or device memory. torch releases the GIL while it computes, so the loop keeps
  receiving, and what arrives meanwhile forms the next batch.
- A loader thread (``asyncio.to_thread``) loads and warms the configured models after the socket is bound and
  before the worker reports ready; until then pongs say ``ready=False`` and requests get ``model_unavailable``.
- The registry poller, a coroutine on the loop, then watches the served aliases and hot-swaps new versions
  (``worker/registry.py`` decides, ``worker/swap.py`` swaps: loads on a loader thread, retires on the
  inference thread).

On the loop, the socket's reader handles each message as it is drained (``_on_message``) and one coroutine, the
batch loop, runs one batch per iteration. The only ``except Exception`` sits at the top of each message and each
iteration: it logs, answers the requests it held with an error, and the worker goes on. Every admitted request
is answered exactly once (``ok``, an error code, or ``model_unavailable`` at shutdown); ``_Job.answered`` guards
that.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import torch
import zmq
import zmq.asyncio
from opentelemetry.trace import Link

from tandem.common.curve import secure_server
from tandem.common.discovery import advertised_endpoint
from tandem.common.errors import (
    STATUS_OK,
    DeadlineExceeded,
    InternalError,
    ModelUnavailable,
    Overloaded,
    PayloadTooLarge,
    TandemError,
    WireError,
)
from tandem.common.gc_pauses import freeze_startup_objects
from tandem.common.logs import configure_logging
from tandem.common.metric_children import child
from tandem.common.send_queue import SendQueue
from tandem.common.settings import WorkerSettings
from tandem.common.socket_reader import SocketReader
from tandem.common.tracing import extract, setup_tracing, tracer
from tandem.common.wire import (
    Cancel,
    InferRequest,
    Ping,
    Pong,
    Reply,
    Tensor,
    decode,
    encode,
    peek_request_id,
)
from tandem.worker import metrics
from tandem.worker.batcher import Batch, Batcher, Clock, ModelKey
from tandem.worker.discovery import register_forever
from tandem.worker.latency import BatchLatencyModel
from tandem.worker.loader import LoadedModel, ModelRef, ModelSource, model_builder, resolve_device
from tandem.worker.registry import LifecycleCounters
from tandem.worker.runner import retire, run_batch, select_outputs, validate
from tandem.worker.slots import ModelSlots
from tandem.worker.stats import BatchStats
from tandem.worker.swap import registry_watcher

log = logging.getLogger(__name__)
_TRACER = tracer("tandem.worker")

SHED_SAFETY_FACTOR = 2.0
"""Admission refuses a request unless its predicted wait and compute, times this, fit its budget.

Half the budget is kept back for misprediction and the reply's way back. With a fifth (1.25), MiniLM at twice
its sustainable load queued requests for ~750 ms of a 1 s deadline and answered fewer in time: goodput 136-165
against 147-174 req/s with a half, which was better in 10 of 12 interleaved rounds; admitted requests' p50
724-765 against 413-468 ms.
"""

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
MS_PER_S = 1000.0


@dataclass(slots=True, eq=False)
class _Job:
    """An admitted request waiting for, or inside, a batch."""

    identity: bytes
    request: InferRequest
    model: LoadedModel
    rows: int
    outputs: list[int] | None
    answered: bool = False
    received: float = 0.0
    received_ns: int = 0  # wall clock, for trace spans


class WorkerServer:
    """Serves the configured models on ``settings.bind``. See the module docstring for the threads.

    Lifecycle: ``await start()`` (bind, start the loops), ``await load_models()``, ``await serve_forever()``
    (returns only if a loop fails), ``await close()``.
    """

    def __init__(
        self,
        settings: WorkerSettings,
        *,
        device: torch.device | None = None,
        slots: ModelSlots | None = None,
        clock: Clock = time.monotonic,
    ) -> None:
        self.settings = settings
        self.device = device if device is not None else resolve_device(settings.device)
        self.slots = slots if slots is not None else ModelSlots()
        self.stats = BatchStats()
        """All batches of all models; each model's own counters are ``model.stats``."""
        self.ready = False
        self.draining = False
        """True during an in-place swap: pongs say not ready, so gateways route elsewhere (``worker/swap.py``)."""
        self.lifecycle = LifecycleCounters()
        """Registry polls, swaps and rejected versions per model (``worker/registry.py``); pongs carry them."""
        self.endpoint = ""
        """The bound endpoint, with the real port when ``settings.bind`` asked for port 0."""
        self._clock = clock
        self._batcher: Batcher[_Job] = Batcher(
            settings.max_batch_size, settings.max_queue_rows, clock, batch_cap=self._batch_cap
        )
        self._inflight = 0  # admitted and not yet answered: queued or computing (the pong's ``f``)
        self._running: list[_Job] = []
        self._latency = BatchLatencyModel()
        self.models_snapshot: list[tuple[str, str, list[str]]] = []
        self._running_until = 0.0  # predicted end of the batch computing now (clock seconds)
        # An asyncio context for the ZAP handler's socket (``common/curve.py``); the ROUTER itself is a plain socket.
        self._context = zmq.asyncio.Context()
        self._socket: zmq.Socket | None = None
        self._reader: SocketReader | None = None
        self._replies: SendQueue | None = None
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="tandem-inference")
        self._inline_compute_s = settings.inline_compute_ms / 1000
        self._tasks: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        """Bind the ROUTER socket, start reading it and start the batch loop."""
        sock = zmq.Socket(self._context, zmq.ROUTER)
        self._zap_task = secure_server(sock, self.settings)  # frame-size cap; CURVE and ZAP when configured
        sock.setsockopt(zmq.LINGER, 0)
        # A ROUTER drops replies past its send high-water mark; replies are bounded by max_queue_rows already.
        sock.setsockopt(zmq.SNDHWM, 0)
        sock.bind(self.settings.bind)
        self._socket = sock
        self.endpoint = sock.getsockopt_string(zmq.LAST_ENDPOINT)
        log.info("worker %s listening on %s", self.settings.worker_id, self.endpoint)
        self._reader = SocketReader(sock, self._on_message, name="worker socket")
        self._reader.start()
        # A ROUTER never refuses a send (SNDHWM 0; one for a peer that has gone is dropped), so none is unsent.
        self._replies = SendQueue(sock, after_send=self._reader.after_send)
        self._tasks = [asyncio.create_task(self._batch_loop(), name="tandem-batch")]

    async def load_models(self) -> None:
        """Load every configured model on a loader thread (one copy per version, shared by aliases), then report
        ready and start watching the registry."""
        source = ModelSource(self.settings.resolved_registry_uri())
        for ref in self.settings.model_refs():
            parsed = ModelRef.parse(ref)
            with await asyncio.to_thread(source.fetch, parsed) as candidate:
                model = self.slots.get(candidate.name, candidate.version)
                if model is None:
                    model = await asyncio.to_thread(model_builder(self.settings), candidate, self.device)
            self.slots.add(model, parsed.alias)
        self.ready = True
        self._watch_registry()

    async def serve_forever(self) -> None:
        """Run until cancelled (or until the batch loop fails, which is a bug: it catches per iteration)."""
        await asyncio.gather(*self._tasks)

    async def retire(self, model: LoadedModel) -> None:
        """Free ``model`` on the inference thread, so it happens after the batch that may still hold it."""
        await asyncio.get_running_loop().run_in_executor(self._executor, retire, model)

    def _watch_registry(self) -> None:
        """Poll the registry for the served aliases and hot-swap the versions they move to (``worker/swap.py``)."""
        poller = registry_watcher(
            self.settings, self.slots, self.device, self.lifecycle, retire=self.retire, set_draining=self._drain
        )
        if poller is not None:
            self._tasks.append(asyncio.create_task(poller.run(), name="tandem-registry-poll"))

    def _drain(self, draining: bool) -> None:
        self.draining = draining

    async def close(self) -> None:
        """Stop the loops, answer what is still queued or computing, and close the socket with linger 0."""
        leftover = list(self._running)
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._reader is not None:
            self._reader.stop()
        if self._socket is not None:
            # Best effort: with linger 0 a reply still in the socket's buffers may be dropped; gateways also
            # fail the pending requests of a worker that goes silent.
            for job in [*leftover, *self._batcher.drain()]:
                if not job.answered:
                    self._answer_error(job, ModelUnavailable("worker is shutting down"))
            self._socket.close(linger=0)
        self._context.destroy(linger=0)
        self._executor.shutdown(wait=False, cancel_futures=True)

    def _on_message(self, frames: list[zmq.Frame]) -> None:
        received = self._clock()
        identity = frames[0].bytes
        unanswered: InferRequest | None = None
        try:
            try:
                message = decode(frames[1:], max_tensor_bytes=self.settings.max_tensor_bytes)
            except WireError as exc:
                self._send(identity, Reply(peek_request_id(frames[1:]), exc.code, model="", error=exc.message))
                return
            if isinstance(message, InferRequest):
                unanswered = message
                self._admit(identity, message, received)
                unanswered = None
            elif isinstance(message, Ping):
                self._send(identity, self._pong(message.seq))
            elif isinstance(message, Cancel):
                job = self._batcher.cancel((identity, message.request_id))
                if job is not None:
                    self._finish(job)
            else:
                log.debug("ignoring a %s message sent to a worker", type(message).__name__)
        except Exception:
            log.exception("failed to handle a message")
            if unanswered is not None:
                self._send(identity, _error_reply(unanswered, InternalError()))

    def _admit(self, identity: bytes, request: InferRequest, received: float) -> None:
        """Queue ``request`` for a batch, or answer it at once with the reason it cannot be."""
        try:
            if not self.ready:
                raise ModelUnavailable("worker is still loading its models")
            model = self.slots.resolve(request.model, request.version)
            rows = validate(model, request.inputs)
            outputs = select_outputs(model, request.outputs)
            if request.budget_ms <= 0:
                raise DeadlineExceeded("the request's time budget ran out before it reached the worker")
            if rows > self.settings.max_queue_rows:
                raise PayloadTooLarge(
                    f"request has {rows} rows; this worker queues at most {self.settings.max_queue_rows}"
                )
            job = _Job(identity, request, model, rows, outputs, received=received, received_ns=time.time_ns())
            deadline = received + request.budget_ms / MS_PER_S
            self._shed_if_late(model.key, rows, received, deadline)
            token = (identity, request.request_id)
            if not self._batcher.offer(model.key, job, rows=rows, deadline=deadline, token=token):
                raise Overloaded(f"worker queue is full ({self._batcher.queued_rows} rows queued)")
            self._inflight += 1
            self.slots.hold(model)  # a swap retires ``model`` only once no admitted request holds it
        except TandemError as exc:
            self._send(identity, _error_reply(request, exc))

    async def _batch_loop(self) -> None:
        loop = asyncio.get_running_loop()
        replies = self._replies
        assert replies is not None  # start() makes it before it starts this loop
        while True:
            await self._batcher.wait()
            batch = self._batcher.take(self._latency.predict)
            if batch is None:
                continue
            try:
                with replies.held():
                    for job in batch.expired:
                        self._answer_error(job, DeadlineExceeded("deadline passed while the request was queued"))
                if not batch.items:
                    continue
                self._running = batch.items
                model = batch.items[0].model
                inputs = [job.request.inputs for job in batch.items]
                started = self._clock()
                started_ns = time.time_ns()
                predicted_s = self._latency.predict(batch.key, batch.rows)
                self._running_until = started + (predicted_s or 0.0)
                if predicted_s is not None and predicted_s < self._inline_compute_s:
                    # Shorter than a hand-off to the inference thread and back.
                    outputs, computed_s = self._timed_run_batch(model, inputs)
                else:
                    outputs, computed_s = await loop.run_in_executor(
                        self._executor, self._timed_run_batch, model, inputs
                    )
                self._latency.observe(batch.key, batch.rows, computed_s)
                self._record_batch(model, batch, started, computed_s)
                trace_batch(model, batch.items, started_ns, time.time_ns())
                with replies.held():  # a batch's replies go back to back (common/send_queue.py)
                    for job, tensors in zip(batch.items, outputs, strict=True):
                        self._answer(job, tensors)
            except Exception as exc:
                log.exception("batch of %d requests for %s failed", len(batch.items), batch.key)
                error = exc if isinstance(exc, TandemError) else InternalError()
                with replies.held():
                    for job in [*batch.expired, *batch.items]:
                        if not job.answered:
                            self._answer_error(job, error)
            finally:
                self._running = []

    def _timed_run_batch(self, model: LoadedModel, inputs: list[list[Tensor]]) -> tuple[list[list[Tensor]], float]:
        """``run_batch``, and the seconds it took on the thread that ran it.

        The hand-off to the inference thread and back is not counted: the latency model learns what a batch
        computes in, so a light model that once ran on the thread (before its first predictions, or in a slow
        moment) is seen to be light and comes back to the event loop. Counting the hand-off kept it there: on a
        busy machine a hand-off alone can take longer than ``inline_compute_ms``.
        """
        started = self._clock()
        outputs = run_batch(model, inputs)
        return outputs, self._clock() - started

    def _expected_wait_s(
        self, now: float, newcomer: tuple[ModelKey, int] | None = None, budget_s: float | None = None
    ) -> float | None:
        """Predicted seconds until the queue is computed: the batch in flight, then every queued row.

        With a ``newcomer`` (its key and rows) queued last, that is when the newcomer is answered: its batch
        is counted as full, since under load the requests that arrive before it runs fill it. With
        ``budget_s``, rows run in batches of the size a request with that budget gets
        (``Batcher.batch_rows_for``); without, in the largest batches its model takes. None while a model's batch
        times are still unknown.
        """
        wait = max(0.0, self._running_until - now) if self._running else 0.0
        queued = dict(self._batcher.rows_by_key())
        if newcomer is not None:
            queued[newcomer[0]] = queued.get(newcomer[0], 0) + newcomer[1]
        for key, rows in queued.items():
            size = self._batcher.most_rows(key)
            if budget_s is not None:
                size = self._batcher.batch_rows_for(key, budget_s, self._latency.predict)
            full, rest = divmod(rows, size)
            if newcomer is not None and key == newcomer[0] and rest:
                full, rest = full + 1, 0  # later arrivals fill the newcomer's batch before it runs
            for batch_rows, count in ((size, full), (rest, 1 if rest else 0)):
                if count:
                    predicted = self._latency.predict(key, batch_rows)
                    if predicted is None:
                        return None
                    wait += count * predicted
        return wait

    def _batch_cap(self, key: ModelKey) -> int | None:
        model = self.slots.get(*key)
        return model.batch_cap if model is not None else None

    def _shed_if_late(self, key: ModelKey, rows: int, now: float, deadline: float) -> None:
        """Refuse at once (``overloaded``) a request predicted to miss its deadline, instead of queueing it."""
        expected = self._expected_wait_s(now, (key, rows), deadline - now)
        if expected is None:
            return
        # Leave some of the budget for the reply's way back and for misprediction.
        if now + expected * SHED_SAFETY_FACTOR > deadline:
            raise Overloaded(
                f"worker is too busy to answer within the deadline (expected {1000 * expected:.0f} ms, "
                f"{1000 * (deadline - now):.0f} ms left)"
            )

    def _record_batch(self, model: LoadedModel, batch: Batch[_Job], started: float, computed_s: float) -> None:
        """The one place batches are counted: pong stats and Prometheus metrics."""
        model.stats.record(batch.rows, len(batch.items))
        self.stats.record(batch.rows, len(batch.items))
        # Models this worker loads and status codes: bounded label sets, each looked up once.
        child(metrics.BATCH_SIZE, model.name).observe(batch.rows)
        child(metrics.BATCH_REQUESTS, model.name).observe(len(batch.items))
        child(metrics.BATCH_COMPUTE, model.name).observe(computed_s)
        queue_wait = child(metrics.QUEUE_WAIT, model.name)
        for job in batch.items:
            queue_wait.observe(max(0.0, started - job.received))
        log.debug("ran %s/%s: %d requests, %d rows", model.name, model.version, len(batch.items), batch.rows)

    def _pong(self, seq: int) -> Pong:
        models = self.slots.describe(self.lifecycle.snapshot)
        # Replaced whole, never mutated: the metrics scrape thread reads it.
        self.models_snapshot = [(m["name"], str(m["version"]), list(m.get("aliases", []))) for m in models]
        return Pong(
            seq=seq,
            worker_id=self.settings.worker_id,
            ready=self.ready and not self.draining,
            queued_rows=self._batcher.queued_rows,
            inflight=self._inflight,
            models=models,
            expected_wait_ms=MS_PER_S * (self._expected_wait_s(self._clock()) or 0.0),
        )

    def export_metrics(self) -> None:
        """Serve this worker's Prometheus metrics on ``settings.metrics_port`` (0: off)."""
        metrics.watch_live_state(lambda: self._batcher.queued_rows, lambda: self._inflight)
        collector = metrics.LifecycleCollector(lambda: self.models_snapshot, self.lifecycle.snapshot_all)
        metrics.watch_lifecycle(collector)
        metrics.serve_metrics(self.settings.metrics_port)

    def _finish(self, job: _Job) -> None:
        job.answered = True
        self._inflight -= 1
        self.slots.release(job.model)

    def _answer(self, job: _Job, tensors: list[Tensor]) -> None:
        self._finish(job)
        child(metrics.WORKER_REQUESTS, job.model.name, STATUS_OK).inc()
        selected = tensors if job.outputs is None else [tensors[i] for i in job.outputs]
        reply = Reply(job.request.request_id, STATUS_OK, job.model.name, version=job.model.version, outputs=selected)
        self._send(job.identity, reply)

    def _answer_error(self, job: _Job, error: TandemError) -> None:
        self._finish(job)
        child(metrics.WORKER_REQUESTS, job.model.name, error.code).inc()
        self._send(job.identity, _error_reply(job.request, error, version=job.model.version))

    def _send(self, identity: bytes, message: Reply | Pong) -> None:
        if self._replies is None or self._socket is None or self._socket.closed:
            return
        self._replies.send([identity, *encode(message)])


def trace_batch(model: LoadedModel, jobs: list[_Job], started_ns: int, ended_ns: int) -> None:
    """Spans of a batch whose requests carried a trace: each request's queue wait, and the batch linked to all.

    Recorded after the fact with explicit timestamps, so tracing adds no work inside the batch.
    """
    traced = [(job, context) for job in jobs if (context := extract(job.request.trace)) is not None]
    if not traced:
        return
    links = []
    for job, context in traced:
        wait = _TRACER.start_span("tandem.worker.queue_wait", context=context, start_time=job.received_ns)
        wait.end(end_time=started_ns)
        links.append(Link(wait.get_span_context()))
    batch = _TRACER.start_span(
        "tandem.worker.batch",
        context=traced[0][1],
        links=links,
        start_time=started_ns,
        attributes={
            "tandem.model": model.name,
            "tandem.version": model.version,
            "tandem.batch.requests": len(jobs),
            "tandem.batch.rows": sum(job.rows for job in jobs),
        },
    )
    batch.end(end_time=ended_ns)


def _error_reply(request: InferRequest, error: TandemError, version: str | None = None) -> Reply:
    return Reply(request.request_id, error.code, request.model, version=version, error=error.public_message())


async def serve(settings: WorkerSettings, *, ready: Callable[[str], None] | None = None) -> None:
    """Bind, load the configured models, call ``ready(endpoint)``, and serve until cancelled."""
    if settings.torch_threads:
        torch.set_num_threads(settings.torch_threads)
    server = WorkerServer(settings)
    registration: asyncio.Task[None] | None = None
    await server.start()
    server.export_metrics()
    try:
        await server.load_models()
        freeze_startup_objects()  # torch's and MLflow's objects: see common/gc_pauses.py
        log.info(
            "worker %s ready on %s (device %s) serving %s",
            settings.worker_id,
            server.endpoint,
            server.device,
            ", ".join(f"{m.name}/{m.version}" for m in server.slots),
        )
        if ready is not None:
            ready(server.endpoint)
        if settings.redis_url:
            endpoint = advertised_endpoint(server.endpoint, settings.advertise)
            registration = asyncio.create_task(register_forever(settings.redis_url, endpoint), name="registration")
            log.info("registering %s in the Redis worker registry", endpoint)
        await server.serve_forever()
    finally:
        if registration is not None:
            registration.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await registration
        await server.close()


def run(settings: WorkerSettings) -> None:
    """Blocking entry point (``tandem worker``): serve until SIGTERM or SIGINT, then stop cleanly."""
    configure_logging(json=settings.log_format == "json")  # keeps the level ``tandem --log-level`` set
    setup_tracing("tandem-worker", settings.trace_exporter, settings.otlp_endpoint, settings.trace_sample_ratio)
    asyncio.run(_serve_until_signalled(settings))


async def _serve_until_signalled(settings: WorkerSettings) -> None:
    loop = asyncio.get_running_loop()
    task = asyncio.current_task()
    if task is None:
        raise RuntimeError("must run inside a task")
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, task.cancel)
    try:
        await serve(settings)
    except asyncio.CancelledError:
        log.info("worker %s stopped", settings.worker_id)
    except TandemError as exc:  # a configured model that is missing or cannot be served
        log.error("worker %s cannot start: %s", settings.worker_id, exc.message)
        raise SystemExit(1) from None
