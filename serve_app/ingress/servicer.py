"""The servicer function Serve's gRPC proxy imports (``grpc_servicer_functions``).

It registers ``serveflow.TaskService`` like the generated
``add_TaskServiceServicer_to_server`` does, but with request deserializers that
never raise: bytes that are not a valid message become a :class:`MalformedRequest`,
which the Coordinator answers with a structured INVALID_ARGUMENT instead of the
proxy's UNKNOWN with a Python exception name in it.
"""

from __future__ import annotations

from typing import Any, Callable

import grpc
from google.protobuf import message_factory

from serve_app.proto import serveflow_pb2 as pb

SERVICE = "serveflow.TaskService"


class MalformedRequest:
    """Stands in for a request message whose bytes could not be parsed (picklable)."""

    def __init__(self, message_type: str, size: int, error: str) -> None:
        self.message_type = message_type
        self.size = size
        self.error = error


def _tolerant(cls: Any) -> Callable[[bytes], Any]:
    def deserialize(data: bytes) -> Any:
        try:
            return cls.FromString(data)
        except Exception as exc:  # DecodeError and friends
            return MalformedRequest(cls.DESCRIPTOR.full_name, len(data), type(exc).__name__)

    return deserialize


def add_TaskServiceServicer_to_server(servicer: Any, server: Any) -> None:  # noqa: N802 (gRPC naming)
    handlers = {}
    for method in pb.DESCRIPTOR.services_by_name["TaskService"].methods:
        request_cls = message_factory.GetMessageClass(method.input_type)
        response_cls = message_factory.GetMessageClass(method.output_type)
        handlers[method.name] = grpc.unary_unary_rpc_method_handler(
            getattr(servicer, method.name),
            request_deserializer=_tolerant(request_cls),
            response_serializer=response_cls.SerializeToString,
        )
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))
    if hasattr(server, "add_registered_method_handlers"):
        server.add_registered_method_handlers(SERVICE, handlers)
