"""OpenTelemetry set-up, and carrying a trace across the ZeroMQ hop.

Off by default: with no tracer provider configured, OpenTelemetry's API hands out non-recording spans, which cost
a few hundred nanoseconds and inject nothing into the wire header. ``setup_tracing`` turns it on for a process
(``TANDEM_TRACE_EXPORTER`` = ``console`` or ``otlp``, with ``TANDEM_OTLP_ENDPOINT`` and a parent-based sampling
ratio). The trace context travels in the wire header's ``tc`` map in W3C Trace Context form (``traceparent``).
"""

from __future__ import annotations

import logging

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

log = logging.getLogger("tandem.tracing")

EXPORTER_NONE = "none"
EXPORTER_CONSOLE = "console"
EXPORTER_OTLP = "otlp"
_PROPAGATOR = TraceContextTextMapPropagator()


def setup_tracing(service: str, exporter: str, endpoint: str = "", sample_ratio: float = 1.0) -> None:
    """Install a tracer provider for this process exporting to ``exporter`` (``none`` leaves tracing off)."""
    if exporter == EXPORTER_NONE:
        return
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SpanExporter
    from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased

    span_exporter: SpanExporter
    if exporter == EXPORTER_CONSOLE:
        span_exporter = ConsoleSpanExporter()
    elif exporter == EXPORTER_OTLP:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        traces_url = f"{endpoint.rstrip('/')}/v1/traces" if endpoint else None
        span_exporter = OTLPSpanExporter(endpoint=traces_url)
    else:
        raise ValueError(f"unknown trace exporter {exporter!r}: use none, console or otlp")
    provider = TracerProvider(
        resource=Resource.create({"service.name": service}), sampler=ParentBased(TraceIdRatioBased(sample_ratio))
    )
    provider.add_span_processor(BatchSpanProcessor(span_exporter))
    trace.set_tracer_provider(provider)
    log.info("tracing on: %s exporter, sampling %.0f%%", exporter, 100 * sample_ratio)


def tracer(name: str) -> trace.Tracer:
    """A tracer that follows whatever provider is installed, now or later."""
    return trace.get_tracer(name)


def inject(span: trace.Span) -> dict[str, str] | None:
    """The wire header's trace context for ``span``; None when it is not recording (tracing off)."""
    if not span.is_recording():
        return None
    carrier: dict[str, str] = {}
    _PROPAGATOR.inject(carrier, context=trace.set_span_in_context(span))
    return carrier or None


def extract(carrier: dict[str, str] | None) -> Context | None:
    """The remote parent context carried in a wire header, if any."""
    if not carrier:
        return None
    return _PROPAGATOR.extract(carrier)
