"""The one ingress pipeline: span -> auth -> parse -> call -> classify -> envelope.

HTTP and gRPC are thin adapters (like Serve's ``GenericProxy`` with its HTTP
and gRPC subclasses): each turns its request into one :class:`Inbound`, hands it
to :meth:`Pipeline.handle` with the :class:`Operation` it addresses, and
encodes whatever comes back. Nothing an operation raises escapes: it is
classified here, once, and answered with the operation's envelope.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable, Generic, Literal, Mapping, Protocol, TypeVar

from pydantic import BaseModel, ValidationError

from serve_app.core import jsonio
from serve_app.core.errors import ValidationFailed, classify, validation_details
from serve_app.core.models import Envelope, TaskResult
from serve_app.ingress.auth import BearerAuth
from serve_app.runtime import tracing

M = TypeVar("M", bound=BaseModel)
Out = TypeVar("Out")


def to_model(model: type[M], doc: Any, *, what: str) -> M:
    """Validate a decoded JSON document (or query/fields mapping) into ``model``: 422 naming the fields."""
    if not isinstance(doc, Mapping):
        raise ValidationFailed(f"{what} must be a JSON object")
    try:
        return model.model_validate(doc)
    except ValidationError as exc:
        raise ValidationFailed(f"{what} does not match the {model.__name__} schema", details=validation_details(exc)) from None


class Body(Protocol):
    """A request's JSON document, read under the size limit (HTTP body or gRPC message fields)."""

    async def read(self, limit: int) -> Any: ...


@dataclass(frozen=True)
class Call:
    """What an operation gets: the validated body and the (validated) parameters."""

    params: Mapping[str, Any]
    body: Any = None
    query: Any = None


@dataclass(frozen=True)
class Reply:
    """An operation's answer: an envelope or a plain document, and the HTTP status on success."""

    payload: Envelope | dict[str, Any]
    status: int = 200


@dataclass(frozen=True)
class Operation:
    """One thing the API does, whatever the protocol. ``envelope`` shapes its failures."""

    name: str
    call: Callable[[Call], Awaitable[Reply]]
    envelope: type[Envelope] = TaskResult
    body: type[BaseModel] | None = None
    query: type[BaseModel] | None = None
    public: bool = False  # open when bearer auth is on (probes, the schema)
    summary: str = ""


@dataclass(frozen=True)
class Inbound(Generic[Out]):
    """One request as the pipeline sees it; the single input of :meth:`Pipeline.handle`, so
    fields can be added without touching a signature."""

    protocol: Literal["http", "grpc"]
    span_name: str
    metadata: Mapping[str, str]  # headers / invocation metadata: authorization, traceparent
    encode: Callable[[Envelope | dict[str, Any], int], Out]  # the adapter's rendering of a reply
    params: Mapping[str, Any] = field(default_factory=dict)
    query: Mapping[str, Any] = field(default_factory=dict)
    body: Body | None = None


class Pipeline:
    def __init__(self, *, auth: BearerAuth | None, max_body_bytes: int) -> None:
        self._auth = auth or BearerAuth(None)
        self.max_body_bytes = max_body_bytes

    async def _call(self, op: Operation, inbound: Inbound[Any]) -> Reply:
        if not op.public:
            self._auth.check(inbound.metadata.get("authorization"))
        body = query = None
        if op.body is not None:
            doc = await inbound.body.read(self.max_body_bytes) if inbound.body is not None else None
            body = to_model(op.body, {} if doc is None else doc, what="request body")
        if op.query is not None:
            query = to_model(op.query, inbound.query, what="query")
        return await op.call(Call(params=inbound.params, body=body, query=query))

    async def handle(self, op: Operation, inbound: Inbound[Out]) -> Out:
        """Answer ``inbound``: the encoded reply, or the encoded failure envelope. Never raises
        (except cancellation), so no protocol ever shows its own error page or a traceback."""
        started = time.perf_counter()
        attributes = {"serveflow.protocol": inbound.protocol}
        with tracing.start_span(inbound.span_name, attributes=attributes, carrier=inbound.metadata) as span:
            try:
                reply = await self._call(op, inbound)
                # Encoding is part of the answer: a value that cannot be rendered fails here,
                # inside the pipeline, not in the protocol's own error handling.
                return inbound.encode(reply.payload, reply.status)
            except Exception as exc:
                trace_id = tracing.trace_id_hex(span)
                err = classify(exc, trace_id=trace_id)
                tracing.record_error(span, err)
                failure = op.envelope.failure(err, trace_id=trace_id, duration_ms=(time.perf_counter() - started) * 1000.0)
                return inbound.encode(failure, 0)


def failing(err: Exception) -> Callable[[Call], Awaitable[Reply]]:
    """An operation body that refuses with ``err`` (a malformed message, a Starlette-level error)."""

    async def call(_: Call) -> Reply:
        raise err

    return call


def render(payload: Envelope | dict[str, Any]) -> str:
    """JSON text of a reply (one encoder for every protocol; refuses NaN)."""
    doc = payload.model_dump(mode="json") if isinstance(payload, Envelope) else payload
    return jsonio.dumps(doc)
