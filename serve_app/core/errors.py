"""The serveflow error hierarchy.

Errors are raised where a problem is found and turned into a protocol answer in
one place (:mod:`serve_app.ingress.pipeline`). Every error carries a stable
``code``, a human message, whether retrying may help, and JSON-safe details.
Nothing here knows about HTTP, gRPC or Ray.
"""

from __future__ import annotations

import logging
from enum import Enum
from typing import Any, ClassVar, Mapping

from pydantic import ValidationError

logger = logging.getLogger("serveflow")


class ErrorCode(str, Enum):
    """Stable, documented error codes; clients switch on these."""

    INVALID_REQUEST = "invalid_request"
    VALIDATION_ERROR = "validation_error"
    UNKNOWN_TASK_TYPE = "unknown_task_type"
    NOT_FOUND = "not_found"
    METHOD_NOT_ALLOWED = "method_not_allowed"
    PAYLOAD_TOO_LARGE = "payload_too_large"
    UNAUTHENTICATED = "unauthenticated"
    HANDLER_ERROR = "handler_error"
    NOT_READY = "not_ready"
    UNAVAILABLE = "unavailable"
    OVERLOADED = "overloaded"
    TIMEOUT = "timeout"
    CANCELLED = "cancelled"
    CONFLICT = "conflict"
    INTERNAL = "internal"


class ServeflowError(Exception):
    """Root of all serveflow errors.

    Fields are keyword-only and read-only after construction so an error can be
    passed around, logged and mapped without surprises.
    """

    code: ClassVar[ErrorCode] = ErrorCode.INTERNAL
    default_retryable: ClassVar[bool] = False

    def __init__(
        self,
        message: str,
        *,
        retryable: bool | None = None,
        details: Mapping[str, Any] | None = None,
        retry_after_s: float | None = None,
    ) -> None:
        super().__init__(message)
        self._message = message
        self._retryable = self.default_retryable if retryable is None else retryable
        self._details = dict(details or {})
        self._retry_after_s = retry_after_s

    @property
    def message(self) -> str:
        return self._message

    @property
    def retryable(self) -> bool:
        return self._retryable

    @property
    def details(self) -> dict[str, Any]:
        return dict(self._details)

    @property
    def retry_after_s(self) -> float | None:
        return self._retry_after_s

    def with_details(self, **extra: Any) -> ServeflowError:
        """A copy of this error (same class, code and message) with ``extra`` added to its details."""
        return type(self)(
            self._message,
            retryable=self._retryable,
            details={**self._details, **extra},
            retry_after_s=self._retry_after_s,
        )

    def __repr__(self) -> str:
        return f"{type(self).__name__}(code={self.code.value!r}, message={self._message!r})"


class InvalidRequest(ServeflowError):
    """The request could not be parsed (bad JSON, wrong shape at the transport level)."""

    code = ErrorCode.INVALID_REQUEST


class ValidationFailed(ServeflowError):
    """The request parsed but its fields are not acceptable."""

    code = ErrorCode.VALIDATION_ERROR


class UnknownTaskType(ServeflowError):
    """No configured pool serves this task type."""

    code = ErrorCode.UNKNOWN_TASK_TYPE


class NotFound(ServeflowError):
    """The addressed resource (route, run, ...) does not exist."""

    code = ErrorCode.NOT_FOUND


class MethodNotAllowed(ServeflowError):
    code = ErrorCode.METHOD_NOT_ALLOWED


class PayloadTooLarge(ServeflowError):
    code = ErrorCode.PAYLOAD_TOO_LARGE

    @classmethod
    def over(cls, limit_bytes: int) -> PayloadTooLarge:
        """The one wording for every ingress."""
        return cls(f"request payload exceeds {limit_bytes} bytes", details={"limit_bytes": limit_bytes})


class Unauthenticated(ServeflowError):
    code = ErrorCode.UNAUTHENTICATED


class HandlerError(ServeflowError):
    """A user handler raised. Handlers may raise this themselves to choose
    ``retryable`` and ``details``; any other exception becomes one of these."""

    code = ErrorCode.HANDLER_ERROR


class NotReady(ServeflowError):
    """The service (or the pool for this task type) has not finished starting."""

    code = ErrorCode.NOT_READY
    default_retryable = True


class Unavailable(ServeflowError):
    """A downstream deployment or replica is gone (died, being replaced)."""

    code = ErrorCode.UNAVAILABLE
    default_retryable = True


class Overloaded(ServeflowError):
    """Queues are full; back off and retry."""

    code = ErrorCode.OVERLOADED
    default_retryable = True


class TaskTimeout(ServeflowError):
    code = ErrorCode.TIMEOUT
    default_retryable = True


class Cancelled(ServeflowError):
    code = ErrorCode.CANCELLED


class Conflict(ServeflowError):
    """The request contradicts existing state (e.g. an idempotency key reused with other input)."""

    code = ErrorCode.CONFLICT


class Internal(ServeflowError):
    """Anything unexpected. The message never carries a traceback; the log does."""

    code = ErrorCode.INTERNAL


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


def validation_details(exc: ValidationError) -> dict[str, Any]:
    """JSON-safe summary of a pydantic error: where and what, never the input."""
    return {
        "errors": [
            {"loc": [str(p) for p in e["loc"]], "msg": e["msg"], "type": e["type"]}
            for e in exc.errors(include_url=False, include_context=False, include_input=False)
        ]
    }


def error_text(exc: BaseException) -> str:
    """One line describing ``exc`` for a status report: a ServeflowError's message, else type and text."""
    if isinstance(exc, ServeflowError):
        return exc.message
    return f"{type(exc).__name__}: {exc}"


_BY_CODE: dict[ErrorCode, type[ServeflowError]] = {
    cls.code: cls
    for cls in (
        InvalidRequest,
        ValidationFailed,
        UnknownTaskType,
        NotFound,
        MethodNotAllowed,
        PayloadTooLarge,
        Unauthenticated,
        HandlerError,
        NotReady,
        Unavailable,
        Overloaded,
        TaskTimeout,
        Cancelled,
        Conflict,
        Internal,
    )
}


def error_class_for(code: str | ErrorCode) -> type[ServeflowError]:
    """The exception class for a wire error code (unknown codes map to Internal)."""
    try:
        return _BY_CODE[ErrorCode(code)]
    except ValueError:
        return Internal
