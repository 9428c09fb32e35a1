"""The gRPC ingress logic, free of Ray: protobuf <-> envelope, status codes via the one mapping.

On failure the RPC ends with the mapped status code, the error message as its
details, and the whole envelope (JSON) in trailing metadata under
:data:`ENVELOPE_KEY`, so gRPC clients get exactly what HTTP clients get.
"""

from __future__ import annotations

import json
from typing import Any, Awaitable, Callable, Iterable, Protocol, Sequence

import grpc
from pydantic import ValidationError

from serve_app import tracing
from serve_app.dispatch import Dispatcher
from serve_app.error_mapping import classify, grpc_status
from serve_app.errors import InvalidRequest, PayloadTooLarge, ServeflowError, ValidationFailed
from serve_app.models import ErrorInfo, TaskRequest, TaskResult
from serve_app.proto import serveflow_pb2 as pb
from serve_app.runner import validation_details

ENVELOPE_KEY = "serveflow-envelope-bin"


class ServerContext(Protocol):
    """What we use of Serve's RayServegRPCContext (and grpc.ServicerContext)."""

    def set_code(self, code: grpc.StatusCode) -> None: ...
    def set_details(self, details: str) -> None: ...
    def set_trailing_metadata(self, trailing_metadata: Sequence[tuple[str, Any]]) -> None: ...


def task_request_from_proto(msg: pb.TaskRequest, *, max_payload_bytes: int) -> TaskRequest:
    """Validate a protobuf TaskRequest exactly as the HTTP API validates its JSON."""
    raw = msg.payload_json
    if len(raw.encode()) > max_payload_bytes:
        raise PayloadTooLarge.over(max_payload_bytes)
    try:
        payload = json.loads(raw) if raw.strip() else {}
    except ValueError:
        raise InvalidRequest("payload_json is not valid JSON") from None
    fields: dict[str, Any] = {"task_type": msg.task_type, "payload": payload}
    if msg.task_id:
        fields["task_id"] = msg.task_id
    if msg.timeout_s:
        fields["timeout_s"] = msg.timeout_s
    try:
        return TaskRequest.model_validate(fields)
    except ValidationError as exc:
        raise ValidationFailed("request does not match the TaskRequest schema", details=validation_details(exc)) from None


def result_to_proto(result: TaskResult) -> pb.TaskResult:
    msg = pb.TaskResult(
        task_id=result.task_id or "",
        task_type=result.task_type or "",
        success=result.success,
        duration_ms=result.duration_ms,
        trace_id=result.trace_id or "",
    )
    if result.success:
        msg.result_json = json.dumps(result.result)
    if result.error is not None:
        msg.error.CopyFrom(
            pb.ErrorInfo(
                code=result.error.code,
                message=result.error.message,
                retryable=result.error.retryable,
                details_json=json.dumps(result.error.details),
            )
        )
    return msg


def result_from_proto(msg: pb.TaskResult) -> TaskResult:
    error = None
    if msg.HasField("error"):
        error = ErrorInfo(
            code=msg.error.code,
            message=msg.error.message,
            retryable=msg.error.retryable,
            details=json.loads(msg.error.details_json or "{}"),
        )
    return TaskResult(
        task_id=msg.task_id or None,
        task_type=msg.task_type or None,
        success=msg.success,
        result=json.loads(msg.result_json) if msg.result_json else None,
        error=error,
        duration_ms=msg.duration_ms,
        trace_id=msg.trace_id or None,
    )


def envelope_from_trailers(metadata: Iterable[tuple[str, Any]] | None) -> TaskResult | None:
    """The envelope a failed RPC carried in its trailing metadata, if any."""
    for key, value in metadata or ():
        if key == ENVELOPE_KEY:
            try:
                return TaskResult.model_validate_json(value)
            except ValidationError:
                return None
    return None


def respond(result: TaskResult, context: ServerContext | None) -> pb.TaskResult:
    """Set the status code and trailers for ``result`` and return the response message."""
    if result.error is not None and context is not None:
        context.set_code(grpc_status(result.error.code))
        context.set_details(result.error.message)
        context.set_trailing_metadata([(ENVELOPE_KEY, result.model_dump_json().encode())])
    return result_to_proto(result)


async def submit_task(
    dispatcher: Dispatcher, request: pb.TaskRequest, context: ServerContext | None, *, max_payload_bytes: int
) -> pb.TaskResult:
    """The SubmitTask RPC."""
    try:
        req = task_request_from_proto(request, max_payload_bytes=max_payload_bytes)
    except ServeflowError as err:
        # As over HTTP: a request that never parsed has no task id or type.
        return respond(TaskResult.failure(err), context)
    return respond(await dispatcher.submit(req), context)


async def get_status(status: Callable[[], Awaitable[dict[str, Any]]], context: ServerContext | None) -> pb.StatusReply:
    """The GetStatus RPC."""
    doc = await status()
    return pb.StatusReply(status=str(doc.get("status", "")), status_json=json.dumps(doc))


async def guarded(call: Awaitable[Any], context: ServerContext | None, empty: Any) -> Any:
    """Run an RPC body; anything unexpected becomes an ``internal`` envelope, never a traceback."""
    try:
        return await call
    except Exception as exc:
        trace_id = tracing.trace_id_hex()
        respond(TaskResult.failure(classify(exc, trace_id=trace_id), trace_id=trace_id), context)
        return empty
