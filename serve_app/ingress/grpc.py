"""The gRPC adapter: ``serveflow.TaskService`` over the one ingress pipeline, free of Ray.

Each RPC names its operation, turns the request message into an
:class:`Inbound` (scalar fields as parameters, ``*_json`` fields decoded by
the one JSON parser under the one size limit) and encodes the reply with the
shared wire codec: on failure the mapped status, the message as details, and
the whole envelope in the trailer.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Mapping, Protocol, Sequence

import grpc

from serve_app.core import codec, jsonio
from serve_app.core.errors import InvalidRequest
from serve_app.core.models import Envelope
from serve_app.ingress.auth import BearerAuth
from serve_app.ingress.operations import Backend, build_operations
from serve_app.ingress.pipeline import Inbound, Operation, Pipeline, failing, render
from serve_app.ingress.servicer import MalformedRequest
from serve_app.proto import serveflow_pb2 as pb


class ServerContext(Protocol):
    """What we use of Serve's RayServegRPCContext (and grpc.ServicerContext)."""

    def set_code(self, code: grpc.StatusCode) -> None: ...
    def set_details(self, details: str) -> None: ...
    def set_trailing_metadata(self, trailing_metadata: Sequence[tuple[str, Any]]) -> None: ...


class GrpcBody:
    """A request message's fields as a JSON document: scalars as they are, ``*_json`` text decoded."""

    def __init__(self, size: int, fields: Mapping[str, Any], json_fields: Mapping[str, tuple[str, str]]) -> None:
        self._size = size
        self._fields = fields
        self._json = json_fields  # document key -> (proto field name, raw text)

    async def read(self, limit: int) -> Any:
        jsonio.check_size(self._size, limit)
        doc = dict(self._fields)
        for key, (field, raw) in self._json.items():
            doc[key] = jsonio.decode(raw, what=field) if raw.strip() else {}
        return doc


def _metadata(context: Any) -> dict[str, str]:
    """Incoming metadata (traceparent, authorization...) of the call."""
    metadata = getattr(context, "invocation_metadata", None)
    if metadata is None:
        return {}
    return {str(k): v for k, v in metadata() if isinstance(v, str)}


def _given(**fields: Any) -> dict[str, Any]:
    """Proto3 scalars carry no presence: an empty/zero field means "not given"."""
    return {k: v for k, v in fields.items() if v}


def _encoder(context: ServerContext | None, ok: Callable[[Any], Any], failed: Callable[[Any], Any]) -> Callable[[Any, int], Any]:
    def encode(payload: Envelope | dict[str, Any], _status: int) -> Any:
        if isinstance(payload, Envelope) and payload.error is not None:
            if context is not None:
                context.set_code(codec.grpc_status(payload.error.code))
                context.set_details(payload.error.message)
                context.set_trailing_metadata(codec.to_trailers(payload))
            return failed(payload)
        return ok(payload)

    return encode


def _status_reply(doc: dict[str, Any]) -> pb.StatusReply:
    return pb.StatusReply(status=str(doc.get("status", "")), status_json=render(doc))


def _task_inputs(request: pb.TaskRequest) -> dict[str, Any]:
    fields = {"task_type": request.task_type, **_given(task_id=request.task_id, timeout_s=request.timeout_s)}
    if request.idempotent:
        fields["idempotent"] = True
    return {"body": GrpcBody(request.ByteSize(), fields, {"payload": ("payload_json", request.payload_json)})}


def _start_inputs(request: pb.StartRunRequest) -> dict[str, Any]:
    fields = {
        "wait": request.wait,
        **_given(idempotency_key=request.idempotency_key, wait_timeout_s=request.wait_timeout_s, priority=request.priority),
    }
    body = GrpcBody(request.ByteSize(), fields, {"input": ("input_json", request.input_json)})
    return {"params": {"name": request.workflow}, "body": body}


def _run_inputs(request: pb.RunRequest) -> dict[str, Any]:
    return {"params": {"run_id": request.run_id}}


def _signal_inputs(request: pb.SignalRequest) -> dict[str, Any]:
    body = GrpcBody(request.ByteSize(), _given(signal_id=request.signal_id), {"payload": ("payload_json", request.payload_json)})
    return {"params": {"run_id": request.run_id, "name": request.name}, "body": body}


def _event_inputs(request: pb.EventRequest) -> dict[str, Any]:
    fields = {"type": request.type, **_given(key=request.key, id=request.id)}
    return {"body": GrpcBody(request.ByteSize(), fields, {"payload": ("payload_json", request.payload_json)})}


def _list_events_inputs(request: pb.ListEventsRequest) -> dict[str, Any]:
    return {"query": _given(type=request.type, after=request.after, limit=request.limit)}


def _dead_letters_inputs(request: pb.DeadLettersRequest) -> dict[str, Any]:
    return {"query": _given(subscription=request.subscription, limit=request.limit)}


def _replay_inputs(request: pb.DeadLettersRequest) -> dict[str, Any]:
    return {"params": {"subscription": request.subscription, "seq": str(request.seq)}}


def _schedule_inputs(request: pb.ScheduleRequest) -> dict[str, Any]:
    return {"params": {"name": request.name}}


def _list_inputs(request: pb.ListRunsRequest) -> dict[str, Any]:
    return {
        "query": _given(
            status=request.status,
            workflow=request.workflow,
            limit=request.limit,
            parent_run_id=request.parent_run_id,
            before=request.before,
        )
    }


@dataclass(frozen=True)
class Rpc:
    """One RPC: the operation it calls, how its message becomes the Inbound's parameters and
    body, and how an answer and a failure envelope become its reply message."""

    operation: str
    inputs: Callable[[Any], dict[str, Any]]
    ok: Callable[[Any], Any]
    failed: Callable[[Any], Any]


RPCS: dict[str, Rpc] = {
    "SubmitTask": Rpc("submitTask", _task_inputs, codec.task_to_proto, codec.task_to_proto),
    "GetStatus": Rpc("status", lambda _: {}, _status_reply, lambda _: pb.StatusReply()),
    "StartRun": Rpc("startRun", _start_inputs, codec.run_to_proto, codec.run_to_proto),
    "GetRun": Rpc("getRun", _run_inputs, codec.run_to_proto, codec.run_to_proto),
    "CancelRun": Rpc("cancelRun", _run_inputs, codec.run_to_proto, codec.run_to_proto),
    "ListRuns": Rpc("listRuns", _list_inputs, codec.run_to_proto, codec.run_to_proto),
    "SendSignal": Rpc("signalRun", _signal_inputs, codec.run_to_proto, codec.run_to_proto),
    "AppendEvent": Rpc("appendEvent", _event_inputs, codec.event_to_proto, codec.event_to_proto),
    "ListEvents": Rpc("listEvents", _list_events_inputs, codec.event_to_proto, codec.event_to_proto),
    "ListDeadLetters": Rpc("listDeadLetters", _dead_letters_inputs, codec.event_to_proto, codec.event_to_proto),
    "ReplayDeadLetter": Rpc("replayDeadLetter", _replay_inputs, codec.event_to_proto, codec.event_to_proto),
    "ListSchedules": Rpc("listSchedules", _schedule_inputs, codec.schedule_to_proto, codec.schedule_to_proto),
    "PauseSchedule": Rpc("pauseSchedule", _schedule_inputs, codec.schedule_to_proto, codec.schedule_to_proto),
    "ResumeSchedule": Rpc("resumeSchedule", _schedule_inputs, codec.schedule_to_proto, codec.schedule_to_proto),
    "TriggerSchedule": Rpc("triggerSchedule", _schedule_inputs, codec.schedule_to_proto, codec.schedule_to_proto),
}


class GrpcIngress:
    """The TaskService RPCs, each one pipeline call."""

    def __init__(self, backend: Backend, *, max_payload_bytes: int, auth: BearerAuth | None = None) -> None:
        self._pipeline = Pipeline(auth=auth, max_body_bytes=max_payload_bytes)
        # The OpenAPI document describes the HTTP routes; no RPC serves it.
        self._ops = build_operations(backend, openapi=dict)

    async def handle(self, name: str, request: Any, context: ServerContext | None) -> Any:
        rpc = RPCS[name]
        op = self._ops[rpc.operation]
        if isinstance(request, MalformedRequest):
            # Auth still comes first: the pipeline checks it, then this operation refuses the bytes.
            err = InvalidRequest(f"request is not a valid {request.message_type} message", details={"bytes": request.size})
            op, inputs = Operation(op.name, failing(err), envelope=op.envelope), {}
        else:
            inputs = rpc.inputs(request)
        encode = _encoder(context, rpc.ok, rpc.failed)
        inbound = Inbound(protocol="grpc", span_name=f"gRPC {name}", metadata=_metadata(context), encode=encode, **inputs)
        return await self._pipeline.handle(op, inbound)

