"""The one tracing helper (OpenTelemetry).

Deployments call :func:`configure` from their constructor (never at import
time); everything else uses :func:`start_span`, :func:`inject` and
:func:`trace_id_hex`. Span context crosses deployment-handle calls as a W3C
``traceparent`` dict carried in the request.
"""

from __future__ import annotations

import json
import logging
import threading
from contextlib import contextmanager
from typing import Any, Iterator, Mapping, Sequence

from opentelemetry import propagate, trace
from opentelemetry.context import Context
from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    ConsoleSpanExporter,
    SimpleSpanProcessor,
    SpanExporter,
    SpanExportResult,
)
from opentelemetry.sdk.trace.id_generator import RandomIdGenerator
from opentelemetry.trace import NonRecordingSpan, Span, SpanContext, Status, StatusCode, TraceFlags

from serve_app.core.errors import ServeflowError

_lock = threading.Lock()
_provider: TracerProvider | None = None
# Spans are recorded only when something reads them (an exporter, or a test's processor).
# Otherwise a span is its ids alone: the trace id for envelopes and logs, and the context
# carried to the worker, at a fraction of a recorded span's cost.
_recording = False
_ids = RandomIdGenerator()


class JsonLinesExporter(SpanExporter):
    """Appends one JSON object per span to a file (every process of the app may share it)."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._lock = threading.Lock()

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        lines = []
        for span in spans:
            ctx = span.get_span_context()
            parent = span.parent
            lines.append(
                json.dumps(
                    {
                        "name": span.name,
                        "trace_id": format(ctx.trace_id, "032x"),
                        "span_id": format(ctx.span_id, "016x"),
                        "parent_id": format(parent.span_id, "016x") if parent else None,
                        "start_ns": span.start_time,
                        "end_ns": span.end_time,
                        "status": span.status.status_code.name,
                        "attributes": {k: v for k, v in (span.attributes or {}).items()},
                    },
                    default=str,
                )
            )
        with self._lock, open(self.path, "a", encoding="utf-8") as f:
            f.write("".join(line + "\n" for line in lines))
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        pass


def _processor_for(exporter: str) -> SpanProcessor | None:
    if exporter == "console":
        return SimpleSpanProcessor(ConsoleSpanExporter())
    if exporter == "otlp":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

        return BatchSpanProcessor(OTLPSpanExporter())
    if exporter.startswith("file:"):
        return SimpleSpanProcessor(JsonLinesExporter(exporter[len("file:") :]))
    if exporter in ("", "none"):
        return None
    raise ValueError(f"unknown trace exporter {exporter!r} (none, console, otlp, file:/path)")


def _install_log_trace_ids() -> None:
    """Prefix serveflow's log records with the current trace id (``[trace_id=...]``)."""
    previous = logging.getLogRecordFactory()
    if getattr(previous, "_serveflow", False):
        return

    def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = previous(*args, **kwargs)
        if record.name.startswith("serveflow"):
            tid = trace_id_hex()
            record.trace_id = tid or "-"
            if tid:
                record.msg = f"[trace_id={tid}] {record.msg}"
        return record

    factory._serveflow = True  # type: ignore[attr-defined]
    logging.setLogRecordFactory(factory)


def configure(exporter: str = "none", *, extra_processor: SpanProcessor | None = None) -> TracerProvider:
    """Install the SDK tracer provider once per process.

    ``exporter``: ``none`` (ids only, nothing exported), ``console``, ``otlp``
    (needs ``opentelemetry-exporter-otlp``; endpoint from the standard
    ``OTEL_EXPORTER_OTLP_*`` variables) or ``file:/path`` (JSON lines).
    """
    global _provider, _recording
    with _lock:
        if _provider is None:
            _provider = TracerProvider()
            processor = _processor_for(exporter)
            if processor is not None:
                _provider.add_span_processor(processor)
                _recording = True
            trace.set_tracer_provider(_provider)
            _install_log_trace_ids()
        if extra_processor is not None:
            _provider.add_span_processor(extra_processor)
            _recording = True
        return _provider


_tracer_cache: trace.Tracer | None = None


def _tracer() -> trace.Tracer:
    # get_tracer() costs ~80 us (it builds an instrumentation scope and touches
    # the warnings filters each time): fetch it once, not once per span.
    global _tracer_cache
    if _tracer_cache is None:
        if _provider is None:
            configure()
        assert _provider is not None
        _tracer_cache = _provider.get_tracer("serveflow")
    return _tracer_cache


@contextmanager
def start_span(
    name: str, *, attributes: Mapping[str, Any] | None = None, carrier: Mapping[str, str] | None = None
) -> Iterator[Span]:
    """Start a span (child of ``carrier``'s context when given) and make it current.

    Exceptions are recorded on the span and re-raised.
    """
    if _provider is None:
        configure()  # a process nobody configured: exporter none (ids only)
    ctx = _context_of(carrier) if carrier else None
    if not _recording:
        with trace.use_span(_unrecorded_child(ctx), end_on_exit=False) as span:
            yield span
        return
    with _tracer().start_as_current_span(
        name, context=ctx, attributes=dict(attributes or {}), record_exception=False, set_status_on_exception=False
    ) as span:
        try:
            yield span
        except BaseException as exc:
            record_error(span, exc)
            raise


def _context_of(carrier: Mapping[str, str]) -> Context:
    """The context ``carrier`` propagates: an empty one (a new trace) when it holds none of the
    fields the propagators read, as most clients' requests do, without parsing anything."""
    if propagate.get_global_textmap().fields.isdisjoint(carrier):
        return Context()
    return propagate.extract(dict(carrier))


def _unrecorded_child(ctx: Any) -> Span:
    """A span that is only ids: a child of ``ctx`` (or of the current span), or a new trace."""
    parent = trace.get_current_span(ctx).get_span_context()
    if parent.is_valid:
        trace_id, state = parent.trace_id, parent.trace_state
    else:
        trace_id, state = _ids.generate_trace_id(), None
    flags = TraceFlags(TraceFlags.SAMPLED)  # as the SDK's default sampler marks it: a recording worker records
    return NonRecordingSpan(SpanContext(trace_id, _ids.generate_span_id(), is_remote=False, trace_flags=flags, trace_state=state))


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
