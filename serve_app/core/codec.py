"""The wire codec, shared by the server and the SDK: envelope <-> protobuf, the envelope
trailer, and error code <-> HTTP/gRPC status, each as a matched pair.

A failed RPC ends with the mapped status code, the error message as its
details, and the whole envelope (JSON) in trailing metadata under
:data:`ENVELOPE_KEY`, so gRPC clients get exactly what HTTP clients get.
"""

from __future__ import annotations

import json
import math
from typing import Any, Iterable, TypeVar

import grpc
from pydantic import ValidationError

from serve_app.core import jsonio
from serve_app.core.errors import ErrorCode
from serve_app.core.models import Envelope, ErrorInfo, EventResult, RunResult, ScheduleResult, TaskResult
from serve_app.proto import serveflow_pb2 as pb

ENVELOPE_KEY = "serveflow-envelope-bin"

# code -> (HTTP status, gRPC status): the one table, read in both directions.
_TABLE: dict[ErrorCode, tuple[int, grpc.StatusCode]] = {
    ErrorCode.INVALID_REQUEST: (400, grpc.StatusCode.INVALID_ARGUMENT),
    ErrorCode.VALIDATION_ERROR: (422, grpc.StatusCode.INVALID_ARGUMENT),
    ErrorCode.UNKNOWN_TASK_TYPE: (404, grpc.StatusCode.NOT_FOUND),
    ErrorCode.NOT_FOUND: (404, grpc.StatusCode.NOT_FOUND),
    ErrorCode.METHOD_NOT_ALLOWED: (405, grpc.StatusCode.UNIMPLEMENTED),
    ErrorCode.PAYLOAD_TOO_LARGE: (413, grpc.StatusCode.RESOURCE_EXHAUSTED),
    ErrorCode.UNAUTHENTICATED: (401, grpc.StatusCode.UNAUTHENTICATED),
    # The request was served and the task ran: its failure is the envelope's news, not the
    # server's (HTTP 200, as AWS Lambda answers a function error). A 5xx here would make load
    # balancers eject healthy Coordinators (e.g. Envoy's consecutive-5xx outlier detection)
    # because of a bug in user code.
    ErrorCode.HANDLER_ERROR: (200, grpc.StatusCode.UNKNOWN),
    ErrorCode.NOT_READY: (503, grpc.StatusCode.UNAVAILABLE),
    ErrorCode.UNAVAILABLE: (503, grpc.StatusCode.UNAVAILABLE),
    ErrorCode.OVERLOADED: (503, grpc.StatusCode.RESOURCE_EXHAUSTED),
    ErrorCode.TIMEOUT: (504, grpc.StatusCode.DEADLINE_EXCEEDED),
    ErrorCode.CANCELLED: (409, grpc.StatusCode.CANCELLED),
    ErrorCode.CONFLICT: (409, grpc.StatusCode.ALREADY_EXISTS),
    ErrorCode.INTERNAL: (500, grpc.StatusCode.INTERNAL),
}
# A status with no envelope (the proxy or the network answered): the code it stands for.
_FROM_GRPC: dict[grpc.StatusCode, ErrorCode] = {
    grpc.StatusCode.UNAVAILABLE: ErrorCode.UNAVAILABLE,
    grpc.StatusCode.DEADLINE_EXCEEDED: ErrorCode.TIMEOUT,
    grpc.StatusCode.RESOURCE_EXHAUSTED: ErrorCode.OVERLOADED,
    grpc.StatusCode.CANCELLED: ErrorCode.CANCELLED,
    grpc.StatusCode.UNAUTHENTICATED: ErrorCode.UNAUTHENTICATED,
    # serveflow's own not_found always carries its envelope; a bare NOT_FOUND is Serve's proxy
    # saying the application is not deployed (yet): during a deploy or a restart, so retryable.
    grpc.StatusCode.NOT_FOUND: ErrorCode.UNAVAILABLE,
    grpc.StatusCode.INVALID_ARGUMENT: ErrorCode.INVALID_REQUEST,
    grpc.StatusCode.UNIMPLEMENTED: ErrorCode.METHOD_NOT_ALLOWED,
    grpc.StatusCode.ALREADY_EXISTS: ErrorCode.CONFLICT,
}
_RETRYABLE_TRANSPORT = frozenset({ErrorCode.UNAVAILABLE, ErrorCode.OVERLOADED, ErrorCode.TIMEOUT})

E = TypeVar("E", bound=Envelope)


def _code(code: str | ErrorCode) -> ErrorCode:
    try:
        return ErrorCode(code)
    except ValueError:
        return ErrorCode.INTERNAL


def http_status(code: str | ErrorCode) -> int:
    return _TABLE[_code(code)][0]


def grpc_status(code: str | ErrorCode) -> grpc.StatusCode:
    return _TABLE[_code(code)][1]


def code_from_grpc(status: grpc.StatusCode | None) -> ErrorCode:
    """The error code a bare gRPC status stands for (``internal`` when it says nothing more)."""
    return _FROM_GRPC.get(status, ErrorCode.INTERNAL) if status is not None else ErrorCode.INTERNAL


def http_headers(info: ErrorInfo) -> dict[str, str]:
    """Extra headers of an error answer: Retry-After on retryable 503s, the auth challenge on 401."""
    if info.code == ErrorCode.UNAUTHENTICATED.value:
        return {"WWW-Authenticate": "Bearer"}
    retry_after = info.details.get("retry_after_s")
    if isinstance(retry_after, (int, float)) and math.isfinite(retry_after):
        return {"Retry-After": str(max(1, math.ceil(retry_after)))}
    if http_status(info.code) == 503:
        return {"Retry-After": "1"}
    return {}


# ----------------------------------------------------------------------------- trailer


def to_trailers(envelope: Envelope) -> list[tuple[str, bytes]]:
    return [(ENVELOPE_KEY, envelope.model_dump_json().encode())]


def from_trailers(metadata: Iterable[tuple[str, Any]] | None, model: type[E]) -> E | None:
    """The envelope a failed RPC carried in its trailing metadata, if any."""
    for key, value in metadata or ():
        if key == ENVELOPE_KEY:
            try:
                return model.model_validate_json(value)
            except ValidationError:
                return None
    return None


def over_message_limit(status: grpc.StatusCode | None, details: str | None) -> bool:
    """Did gRPC refuse a message for its size? (Sending it again cannot help.)"""
    return status == grpc.StatusCode.RESOURCE_EXHAUSTED and "larger than max" in (details or "")


def transport_failure(status: grpc.StatusCode | None, details: str | None) -> ErrorInfo:
    """The error of an RPC that ended without an envelope (proxy, network, deadline)."""
    code = code_from_grpc(status)
    text = (details or "").strip()
    message = text.splitlines()[0][:500] if text else f"gRPC call failed: {code.value}"
    if over_message_limit(status, text):
        code = ErrorCode.PAYLOAD_TOO_LARGE
    return ErrorInfo(
        code=code.value,
        message=message,
        retryable=code in _RETRYABLE_TRANSPORT,
        details={"grpc_status": status.name if status is not None else "UNKNOWN", "transport": True},
    )


# ----------------------------------------------------------------------------- protobuf


def error_to_proto(info: ErrorInfo) -> pb.ErrorInfo:
    return pb.ErrorInfo(code=info.code, message=info.message, retryable=info.retryable, details_json=jsonio.dumps(info.details))


def error_from_proto(msg: pb.ErrorInfo) -> ErrorInfo:
    return ErrorInfo(code=msg.code, message=msg.message, retryable=msg.retryable, details=json.loads(msg.details_json or "{}"))


def _json_or_none(raw: str) -> Any:
    return json.loads(raw) if raw else None


def task_to_proto(result: TaskResult) -> pb.TaskResult:
    msg = pb.TaskResult(
        task_id=result.task_id or "",
        task_type=result.task_type or "",
        success=result.success,
        duration_ms=result.duration_ms,
        trace_id=result.trace_id or "",
    )
    if result.success:
        msg.result_json = jsonio.dumps(result.result)
    if result.error is not None:
        msg.error.CopyFrom(error_to_proto(result.error))
    return msg


def task_from_proto(msg: pb.TaskResult) -> TaskResult:
    return TaskResult(
        task_id=msg.task_id or None,
        task_type=msg.task_type or None,
        success=msg.success,
        result=_json_or_none(msg.result_json),
        error=error_from_proto(msg.error) if msg.HasField("error") else None,
        duration_ms=msg.duration_ms,
        trace_id=msg.trace_id or None,
    )


def run_to_proto(result: RunResult) -> pb.RunReply:
    msg = pb.RunReply(
        success=result.success,
        run_id=result.run_id or "",
        workflow=result.workflow or "",
        duration_ms=result.duration_ms,
        trace_id=result.trace_id or "",
    )
    if result.created is not None:
        msg.created = result.created
    if result.run is not None:
        msg.run_json = jsonio.dumps(result.run)
    if result.runs is not None:
        msg.runs_json = jsonio.dumps(result.runs)
    if result.error is not None:
        msg.error.CopyFrom(error_to_proto(result.error))
    return msg


def run_from_proto(msg: pb.RunReply) -> RunResult:
    return RunResult(
        success=msg.success,
        run_id=msg.run_id or None,
        workflow=msg.workflow or None,
        created=msg.created if msg.HasField("created") else None,
        run=_json_or_none(msg.run_json),
        runs=_json_or_none(msg.runs_json),
        error=error_from_proto(msg.error) if msg.HasField("error") else None,
        duration_ms=msg.duration_ms,
        trace_id=msg.trace_id or None,
    )


def schedule_to_proto(result: ScheduleResult) -> pb.ScheduleReply:
    msg = pb.ScheduleReply(
        success=result.success, run_id=result.run_id or "", duration_ms=result.duration_ms, trace_id=result.trace_id or ""
    )
    if result.schedules is not None:
        msg.schedules_json = jsonio.dumps(result.schedules)
    if result.schedule is not None:
        msg.schedule_json = jsonio.dumps(result.schedule)
    if result.error is not None:
        msg.error.CopyFrom(error_to_proto(result.error))
    return msg


def schedule_from_proto(msg: pb.ScheduleReply) -> ScheduleResult:
    return ScheduleResult(
        success=msg.success,
        schedules=_json_or_none(msg.schedules_json),
        schedule=_json_or_none(msg.schedule_json),
        run_id=msg.run_id or None,
        error=error_from_proto(msg.error) if msg.HasField("error") else None,
        duration_ms=msg.duration_ms,
        trace_id=msg.trace_id or None,
    )


def event_to_proto(result: EventResult) -> pb.EventReply:
    msg = pb.EventReply(success=result.success, duration_ms=result.duration_ms, trace_id=result.trace_id or "")
    if result.created is not None:
        msg.created = result.created
    for field in ("event", "events", "dead_letters", "dead_letter"):
        value = getattr(result, field)
        if value is not None:
            setattr(msg, f"{field}_json", jsonio.dumps(value))
    if result.error is not None:
        msg.error.CopyFrom(error_to_proto(result.error))
    return msg


def event_from_proto(msg: pb.EventReply) -> EventResult:
    return EventResult(
        success=msg.success,
        event=_json_or_none(msg.event_json),
        created=msg.created if msg.HasField("created") else None,
        events=_json_or_none(msg.events_json),
        dead_letters=_json_or_none(msg.dead_letters_json),
        dead_letter=_json_or_none(msg.dead_letter_json),
        error=error_from_proto(msg.error) if msg.HasField("error") else None,
        duration_ms=msg.duration_ms,
        trace_id=msg.trace_id or None,
    )
