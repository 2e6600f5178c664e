"""The worker's Prometheus metrics, served on its own HTTP port (``TANDEM_METRICS_PORT``; 0 turns it off).

A worker is one process, so these are plain process-wide metrics. Counting happens where the worker already
counts (``WorkerServer._record_batch`` and the lifecycle counters): this module only names the series. Gauges of
live state (queue depth, in flight) read the server at scrape time, costing nothing per request.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from prometheus_client import Counter, Gauge, Histogram, start_http_server

log = logging.getLogger("tandem.worker.metrics")

LATENCY_BUCKETS_S = (
    0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.03, 0.05, 0.075,
    0.1, 0.15, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
)  # fmt: skip
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048)

BATCH_SIZE = Histogram("tandem_batch_size", "Rows per computed batch.", ["model"], buckets=BATCH_BUCKETS)
BATCH_REQUESTS = Histogram("tandem_batch_requests", "Requests per computed batch.", ["model"], buckets=BATCH_BUCKETS)
BATCH_COMPUTE = Histogram(
    "tandem_batch_compute_seconds", "Time one batch spent on the inference thread.", ["model"],
    buckets=LATENCY_BUCKETS_S,
)  # fmt: skip
QUEUE_WAIT = Histogram(
    "tandem_queue_wait_seconds", "Time from a request's arrival to the start of its batch.", ["model"],
    buckets=LATENCY_BUCKETS_S,
)  # fmt: skip
WORKER_REQUESTS = Counter(
    "tandem_worker_requests_total", "Requests answered by this worker, by model and status.", ["model", "status"]
)
QUEUE_DEPTH = Gauge("tandem_queue_depth", "Rows queued in this worker, waiting for a batch.")
WORKER_INFLIGHT = Gauge("tandem_worker_inflight", "Requests admitted and not yet answered.")
MODEL_INFO = Gauge(
    "tandem_model_info", "1 for each model version this worker serves, by alias.", ["model", "version", "alias"]
)
SWAPS = Counter("tandem_swaps_total", "Model version changes, by result (swapped, rejected).", ["model", "result"])
POLL_ERRORS = Counter("tandem_registry_poll_errors_total", "Registry polls that failed.")


def watch_live_state(queued_rows: Callable[[], float], inflight: Callable[[], float]) -> None:
    """Have the live gauges read the server's state when scraped."""
    QUEUE_DEPTH.set_function(queued_rows)
    WORKER_INFLIGHT.set_function(inflight)


def serve_metrics(port: int, host: str = "0.0.0.0") -> None:
    """Start the exposition server on a daemon thread; a port of 0 turns metrics off."""
    if not port:
        return
    start_http_server(port, addr=host)
    log.info("metrics on http://%s:%d/metrics", host, port)
