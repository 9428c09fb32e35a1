"""The one tracing helper (OpenTelemetry).

Deployments call :func:`configure` from their constructor (never at import
time); everything else uses :func:`start_span`, :func:`inject` and
:func:`trace_id_hex`. Span context crosses deployment-handle calls as a W3C
``traceparent`` dict carried in the request.
"""

from __future__ import annotations

import threading
from contextlib import contextmanager
from typing import Any, Iterator, Mapping

from opentelemetry import propagate, trace
from opentelemetry.sdk.trace import SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SimpleSpanProcessor
from opentelemetry.trace import Span, Status, StatusCode

from serve_app.errors import ServeflowError

_lock = threading.Lock()
_provider: TracerProvider | None = None


def configure(exporter: str = "none", *, extra_processor: SpanProcessor | None = None) -> TracerProvider:
    """Install the SDK tracer provider once per process.

    ``exporter``: ``none`` (ids only, nothing exported), ``console``, or ``otlp``
    (needs ``opentelemetry-exporter-otlp``; endpoint from the standard
    ``OTEL_EXPORTER_OTLP_*`` variables).
    """
    global _provider
    with _lock:
        if _provider is None:
            _provider = TracerProvider()
            if exporter == "console":
                _provider.add_span_processor(SimpleSpanProcessor(ConsoleSpanExporter()))
            elif exporter == "otlp":
                from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

                _provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
            trace.set_tracer_provider(_provider)
        if extra_processor is not None:
            _provider.add_span_processor(extra_processor)
        return _provider


def _tracer() -> trace.Tracer:
    if _provider is None:
        configure()
    assert _provider is not None
    return _provider.get_tracer("serveflow")


@contextmanager
def start_span(
    name: str, *, attributes: Mapping[str, Any] | None = None, carrier: Mapping[str, str] | None = None
) -> Iterator[Span]:
    """Start a span (child of ``carrier``'s context when given) and make it current.

    Exceptions are recorded on the span and re-raised.
    """
    ctx = propagate.extract(dict(carrier)) if carrier else None
    with _tracer().start_as_current_span(
        name, context=ctx, attributes=dict(attributes or {}), record_exception=False, set_status_on_exception=False
    ) as span:
        try:
            yield span
        except BaseException as exc:
            record_error(span, exc)
            raise


def record_error(span: Span, exc: BaseException) -> None:
    """Mark ``span`` failed; ServeflowErrors keep their code, others their type."""
    code = exc.code.value if isinstance(exc, ServeflowError) else type(exc).__name__
    span.set_attribute("serveflow.error_code", code)
    span.set_status(Status(StatusCode.ERROR, code))
    span.record_exception(exc)


def inject() -> dict[str, str]:
    """The current span context as a carrier dict (``traceparent``...)."""
    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    return carrier


def trace_id_hex(span: Span | None = None) -> str | None:
    span = span or trace.get_current_span()
    ctx = span.get_span_context()
    return format(ctx.trace_id, "032x") if ctx.is_valid else None
