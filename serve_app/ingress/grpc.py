"""The gRPC ingress logic, free of Ray: protobuf <-> envelope, status codes via the one mapping.

On failure the RPC ends with the mapped status code, the error message as its
details, and the whole envelope (JSON) in trailing metadata under
:data:`ENVELOPE_KEY`, so gRPC clients get exactly what HTTP clients get.
"""

from __future__ import annotations

import json
from typing import Any, Awaitable, Callable, Iterable, Protocol, Sequence, TypeVar

import grpc
from pydantic import ValidationError

from serve_app.runtime import tracing
from serve_app.runtime.dispatch import Dispatcher
from serve_app.ingress.pipeline import classify, grpc_status
from serve_app.ingress.auth import BearerAuth
from serve_app.core.errors import InvalidRequest, NotFound, PayloadTooLarge, ValidationFailed
from serve_app.core.models import ErrorInfo, TaskRequest, TaskResult
from serve_app.ingress.servicer import MalformedRequest
from serve_app.proto import serveflow_pb2 as pb
from serve_app.runtime.runner import validation_details
from serve_app.workflow.api import RunResult, RunService, parse_start

ENVELOPE_KEY = "serveflow-envelope-bin"


class ServerContext(Protocol):
    """What we use of Serve's RayServegRPCContext (and grpc.ServicerContext)."""

    def set_code(self, code: grpc.StatusCode) -> None: ...
    def set_details(self, details: str) -> None: ...
    def set_trailing_metadata(self, trailing_metadata: Sequence[tuple[str, Any]]) -> None: ...


def json_field(raw: str, field: str) -> Any:
    """A JSON-text field of a request message: empty means {}, malformed is ``invalid_request``."""
    if not raw.strip():
        return {}
    try:
        return json.loads(raw)
    except ValueError:
        raise InvalidRequest(f"{field} is not valid JSON") from None


def task_request_from_proto(msg: pb.TaskRequest, *, max_payload_bytes: int) -> TaskRequest:
    """Validate a protobuf TaskRequest exactly as the HTTP API validates its JSON."""
    if len(msg.payload_json.encode()) > max_payload_bytes:
        raise PayloadTooLarge.over(max_payload_bytes)
    fields: dict[str, Any] = {"task_type": msg.task_type, "payload": json_field(msg.payload_json, "payload_json")}
    if msg.task_id:
        fields["task_id"] = msg.task_id
    if msg.timeout_s:
        fields["timeout_s"] = msg.timeout_s
    if msg.idempotent:
        fields["idempotent"] = True
    try:
        return TaskRequest.model_validate(fields)
    except ValidationError as exc:
        raise ValidationFailed("request does not match the TaskRequest schema", details=validation_details(exc)) from None


def error_to_proto(info: ErrorInfo) -> pb.ErrorInfo:
    return pb.ErrorInfo(
        code=info.code, message=info.message, retryable=info.retryable, details_json=json.dumps(info.details)
    )


def error_from_proto(msg: pb.ErrorInfo) -> ErrorInfo:
    return ErrorInfo(
        code=msg.code, message=msg.message, retryable=msg.retryable, details=json.loads(msg.details_json or "{}")
    )


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
        msg.error.CopyFrom(error_to_proto(result.error))
    return msg


def result_from_proto(msg: pb.TaskResult) -> TaskResult:
    error = error_from_proto(msg.error) if msg.HasField("error") else None
    return TaskResult(
        task_id=msg.task_id or None,
        task_type=msg.task_type or None,
        success=msg.success,
        result=json.loads(msg.result_json) if msg.result_json else None,
        error=error,
        duration_ms=msg.duration_ms,
        trace_id=msg.trace_id or None,
    )


E = TypeVar("E", TaskResult, RunResult)


def envelope_from_trailers(metadata: Iterable[tuple[str, Any]] | None, model: type[E]) -> E | None:
    """The envelope (``TaskResult`` or ``RunResult``) a failed RPC carried in its trailing metadata, if any."""
    for key, value in metadata or ():
        if key == ENVELOPE_KEY:
            try:
                return model.model_validate_json(value)
            except ValidationError:
                return None
    return None


def _set_failure(result: TaskResult | RunResult, context: ServerContext | None) -> None:
    if result.error is not None and context is not None:
        context.set_code(grpc_status(result.error.code))
        context.set_details(result.error.message)
        context.set_trailing_metadata([(ENVELOPE_KEY, result.model_dump_json(exclude_none=True).encode())])


def respond(result: TaskResult, context: ServerContext | None) -> pb.TaskResult:
    """Set the status code and trailers for ``result`` and return the response message."""
    _set_failure(result, context)
    return result_to_proto(result)


def run_to_proto(result: RunResult) -> pb.RunReply:
    msg = pb.RunReply(
        success=result.success,
        run_id=result.run_id or "",
        workflow=result.workflow or "",
        created=bool(result.created),
        duration_ms=result.duration_ms,
        trace_id=result.trace_id or "",
    )
    if result.run is not None:
        msg.run_json = json.dumps(result.run)
    if result.runs is not None:
        msg.runs_json = json.dumps(result.runs)
    if result.error is not None:
        msg.error.CopyFrom(error_to_proto(result.error))
    return msg


def run_from_proto(msg: pb.RunReply) -> RunResult:
    error = error_from_proto(msg.error) if msg.HasField("error") else None
    return RunResult(
        success=msg.success,
        run_id=msg.run_id or None,
        workflow=msg.workflow or None,
        created=msg.created,
        run=json.loads(msg.run_json) if msg.run_json else None,
        runs=json.loads(msg.runs_json) if msg.runs_json else None,
        error=error,
        duration_ms=msg.duration_ms,
        trace_id=msg.trace_id or None,
    )


def respond_run(result: RunResult, context: ServerContext | None) -> pb.RunReply:
    _set_failure(result, context)
    return run_to_proto(result)


def _carrier(context: Any) -> dict[str, str]:
    """Incoming metadata (traceparent, authorization...) of the call."""
    metadata = getattr(context, "invocation_metadata", None)
    if metadata is None:
        return {}
    return {str(k): v for k, v in metadata() if isinstance(v, str)}


class GrpcIngress:
    """The TaskService RPCs: one span per call, auth, malformed-message check, one error mapping."""

    def __init__(
        self,
        dispatcher: Dispatcher,
        status: Callable[[], Awaitable[dict[str, Any]]],
        *,
        max_payload_bytes: int,
        runs: RunService | None = None,
        auth: BearerAuth | None = None,
    ) -> None:
        self._dispatcher = dispatcher
        self._status = status
        self._max_payload = max_payload_bytes
        self._runs = runs
        self._auth = auth or BearerAuth(None)

    def _admit(self, request: Any, metadata: dict[str, str]) -> None:
        self._auth.check(metadata.get("authorization"))
        if isinstance(request, MalformedRequest):
            raise InvalidRequest(
                f"request is not a valid {request.message_type} message", details={"bytes": request.size}
            )

    def _service(self) -> RunService:
        if self._runs is None:
            raise NotFound("workflows are not enabled")
        return self._runs

    async def _task_call(self, name: str, request: Any, context: Any, body: Callable[[], Awaitable[Any]], empty: Any) -> Any:
        metadata = _carrier(context)
        with tracing.start_span(f"gRPC {name}", carrier=metadata):
            try:
                self._admit(request, metadata)
                return await body()
            except Exception as exc:
                # A request that never parsed has no task id or type, as over HTTP.
                trace_id = tracing.trace_id_hex()
                respond(TaskResult.failure(classify(exc, trace_id=trace_id), trace_id=trace_id), context)
                return empty

    async def _run_call(self, name: str, request: Any, context: Any, body: Callable[[], Awaitable[RunResult]]) -> pb.RunReply:
        metadata = _carrier(context)
        with tracing.start_span(f"gRPC {name}", carrier=metadata):
            try:
                self._admit(request, metadata)
                return respond_run(await body(), context)
            except Exception as exc:
                return respond_run(RunResult.failure(classify(exc, trace_id=tracing.trace_id_hex())), context)

    async def submit_task(self, request: pb.TaskRequest, context: Any) -> pb.TaskResult:
        async def body() -> pb.TaskResult:
            req = task_request_from_proto(request, max_payload_bytes=self._max_payload)
            return respond(await self._dispatcher.submit(req), context)

        return await self._task_call("SubmitTask", request, context, body, pb.TaskResult())

    async def get_status(self, request: pb.StatusRequest, context: Any) -> pb.StatusReply:
        async def body() -> pb.StatusReply:
            doc = await self._status()
            return pb.StatusReply(status=str(doc.get("status", "")), status_json=json.dumps(doc))

        return await self._task_call("GetStatus", request, context, body, pb.StatusReply())

    async def start_run(self, request: pb.StartRunRequest, context: Any) -> pb.RunReply:
        async def body() -> RunResult:
            raw: dict[str, Any] = {"input": json_field(request.input_json, "input_json"), "wait": request.wait}
            if request.idempotency_key:
                raw["idempotency_key"] = request.idempotency_key
            if request.wait_timeout_s:
                raw["wait_timeout_s"] = request.wait_timeout_s
            return await self._service().start(request.workflow, parse_start(raw))

        return await self._run_call("StartRun", request, context, body)

    async def get_run(self, request: pb.RunRequest, context: Any) -> pb.RunReply:
        return await self._run_call("GetRun", request, context, lambda: self._service().get(request.run_id))

    async def cancel_run(self, request: pb.RunRequest, context: Any) -> pb.RunReply:
        return await self._run_call("CancelRun", request, context, lambda: self._service().cancel(request.run_id))

    async def list_runs(self, request: pb.ListRunsRequest, context: Any) -> pb.RunReply:
        return await self._run_call(
            "ListRuns",
            request,
            context,
            lambda: self._service().list(status=request.status or None, workflow=request.workflow or None, limit=request.limit or 50),
        )
