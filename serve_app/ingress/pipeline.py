"""The one place where errors become protocol answers.

Every ingress (HTTP, gRPC) calls :func:`classify` on whatever it caught and
then :func:`http_status` / :func:`grpc_status`. Unknown exceptions become
``internal`` with the trace id; their traceback goes to the log only.
"""

from __future__ import annotations

import logging
import math

import grpc

from serve_app.core.errors import ErrorCode, Internal, ServeflowError
from serve_app.core.models import ErrorInfo

logger = logging.getLogger("serveflow")

# code -> (HTTP status, gRPC status)
_TABLE: dict[ErrorCode, tuple[int, grpc.StatusCode]] = {
    ErrorCode.INVALID_REQUEST: (400, grpc.StatusCode.INVALID_ARGUMENT),
    ErrorCode.VALIDATION_ERROR: (422, grpc.StatusCode.INVALID_ARGUMENT),
    ErrorCode.UNKNOWN_TASK_TYPE: (404, grpc.StatusCode.NOT_FOUND),
    ErrorCode.NOT_FOUND: (404, grpc.StatusCode.NOT_FOUND),
    ErrorCode.METHOD_NOT_ALLOWED: (405, grpc.StatusCode.UNIMPLEMENTED),
    ErrorCode.PAYLOAD_TOO_LARGE: (413, grpc.StatusCode.RESOURCE_EXHAUSTED),
    ErrorCode.UNAUTHENTICATED: (401, grpc.StatusCode.UNAUTHENTICATED),
    ErrorCode.HANDLER_ERROR: (500, grpc.StatusCode.UNKNOWN),
    ErrorCode.NOT_READY: (503, grpc.StatusCode.UNAVAILABLE),
    ErrorCode.UNAVAILABLE: (503, grpc.StatusCode.UNAVAILABLE),
    ErrorCode.OVERLOADED: (503, grpc.StatusCode.RESOURCE_EXHAUSTED),
    ErrorCode.TIMEOUT: (504, grpc.StatusCode.DEADLINE_EXCEEDED),
    ErrorCode.CANCELLED: (409, grpc.StatusCode.CANCELLED),
    ErrorCode.CONFLICT: (409, grpc.StatusCode.ALREADY_EXISTS),
    ErrorCode.INTERNAL: (500, grpc.StatusCode.INTERNAL),
}


def classify(exc: BaseException, *, trace_id: str | None = None) -> ServeflowError:
    """Return ``exc`` if it is already a ServeflowError, else an ``internal`` one.

    The original exception's traceback is logged here, once, so callers can
    answer the client without ever exposing it.
    """
    if isinstance(exc, ServeflowError):
        return exc
    logger.error("unexpected error (trace_id=%s)", trace_id, exc_info=exc)
    details = {"trace_id": trace_id} if trace_id else {}
    return Internal("internal error; see server logs for this trace id", details=details)


def http_status(code: str | ErrorCode) -> int:
    return _TABLE[_code(code)][0]


def grpc_status(code: str | ErrorCode) -> grpc.StatusCode:
    return _TABLE[_code(code)][1]


def http_headers(info: ErrorInfo) -> dict[str, str]:
    """Extra headers for an error answer (Retry-After on retryable 503s)."""
    retry_after = info.details.get("retry_after_s")
    if isinstance(retry_after, (int, float)):
        return {"Retry-After": str(max(1, math.ceil(retry_after)))}
    if http_status(info.code) == 503:
        return {"Retry-After": "1"}
    return {}


def _code(code: str | ErrorCode) -> ErrorCode:
    try:
        return ErrorCode(code)
    except ValueError:
        return ErrorCode.INTERNAL
