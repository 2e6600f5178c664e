"""The worker's Prometheus metrics, served on its own HTTP port (``TANDEM_METRICS_PORT``; 0 turns it off).

A worker is one process, so these are plain process-wide metrics. Counting happens where the worker already
counts (``WorkerServer._record_batch`` and the lifecycle counters): this module only names the series. Gauges of
live state (queue depth, in flight) read the server at scrape time, costing nothing per request.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import REGISTRY, Counter, Gauge, Histogram, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

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


class LifecycleCollector:
    """Model versions served and lifecycle events, read at scrape time from what the server already keeps.

    ``models()`` returns ``(name, version, aliases)`` tuples and ``lifecycle()`` each model's lifecycle counters
    (``tandem.worker.registry.LifecycleStats`` as a map); both are snapshots the loop thread replaces whole, so
    the scrape thread never iterates a structure being changed.
    """

    def __init__(
        self,
        models: Callable[[], list[tuple[str, str, list[str]]]],
        lifecycle: Callable[[], dict[str, dict[str, Any]]],
    ) -> None:
        self._models = models
        self._lifecycle = lifecycle

    def collect(self) -> Iterator[Metric]:
        """The metric families, built fresh for each scrape."""
        info = GaugeMetricFamily(
            "tandem_model_info", "1 per model version served, by alias.", labels=["model", "version", "alias"]
        )
        for name, version, aliases in self._models():
            for alias in aliases or [""]:
                info.add_metric([name, version, alias], 1)
        swaps = CounterMetricFamily("tandem_swaps", "Model version changes, by result.", labels=["model", "result"])
        polls = CounterMetricFamily("tandem_registry_polls", "Registry polls, by result.", labels=["model", "result"])
        for name, stats in self._lifecycle().items():
            swaps.add_metric([name, "swapped"], stats.get("swaps", 0))
            swaps.add_metric([name, "rejected"], stats.get("rejected", 0))
            polls.add_metric([name, "ok"], stats.get("polls", 0))
            polls.add_metric([name, "error"], stats.get("poll_errors", 0))
        yield from (info, swaps, polls)


_lifecycle_collector: LifecycleCollector | None = None


def watch_lifecycle(collector: LifecycleCollector) -> None:
    """Make ``collector`` the one the process's registry scrapes (the latest server's, in tests)."""
    global _lifecycle_collector
    if _lifecycle_collector is not None:
        REGISTRY.unregister(_lifecycle_collector)
    REGISTRY.register(collector)
    _lifecycle_collector = collector


def watch_live_state(queued_rows: Callable[[], float], inflight: Callable[[], float]) -> None:
    """Have the live gauges read the server's state when scraped."""
    QUEUE_DEPTH.set_function(queued_rows)
    WORKER_INFLIGHT.set_function(inflight)


def serve_metrics(port: int, host: str = "0.0.0.0") -> None:
    """Start the exposition server on a daemon thread; a port of 0 turns metrics off.

    A port already taken (two workers on one host with the default) costs the metrics, never the serving.
    """
    if not port:
        return
    try:
        start_http_server(port, addr=host)
    except OSError as exc:
        log.warning("metrics off: cannot listen on %s:%d (%s); set TANDEM_METRICS_PORT", host, port, exc)
        return
    log.info("metrics on http://%s:%d/metrics", host, port)
