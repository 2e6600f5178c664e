"""Prometheus metric children looked up once per label set, in the gateway and the worker alike.

``metric.labels(...)`` takes a lock and builds a key on every call (~1.2 us); a request counted on a few series
paid that several times over. ``child`` keeps each child it has looked up (~0.2 us a call after the first).
Use it only where the label values are bounded (route templates, served models, status codes, reasons) and for
metrics whose children are never removed: the cache holds a child for the life of the process, as the metric
itself does.
"""

from __future__ import annotations

import functools
from typing import TypeVar

from prometheus_client.metrics import MetricWrapperBase

Metric = TypeVar("Metric", bound=MetricWrapperBase)


@functools.cache
def child(metric: Metric, *labels: str) -> Metric:
    """``metric.labels(*labels)``, looked up once."""
    return metric.labels(*labels)
