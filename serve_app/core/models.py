"""Wire models shared by every protocol: requests, the result envelope, status."""

from __future__ import annotations

from enum import Enum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from serve_app.core.errors import ServeflowError

NAME_PATTERN = r"^[A-Za-z0-9_.\-]+$"


class ErrorInfo(BaseModel):
    """The error part of an envelope: what went wrong, never how (no traceback)."""

    code: str = Field(description="Stable error code, e.g. 'validation_error'.")
    message: str = Field(description="Human readable message.")
    retryable: bool = Field(description="Whether the same request may succeed if retried.")
    details: dict[str, Any] = Field(default_factory=dict, description="Structured, JSON-safe details.")

    @classmethod
    def from_error(cls, err: ServeflowError) -> ErrorInfo:
        details = err.details
        if err.retry_after_s is not None:
            details["retry_after_s"] = err.retry_after_s
        return cls(code=err.code.value, message=err.message, retryable=err.retryable, details=details)


class TaskRequest(BaseModel):
    """A request to run one task of a registered type."""

    model_config = ConfigDict(extra="forbid")

    task_type: str = Field(min_length=1, max_length=128, pattern=NAME_PATTERN, description="Registered task type.")
    payload: dict[str, Any] = Field(default_factory=dict, description="Handler input, validated by the handler's model.")
    task_id: str | None = Field(
        default=None, min_length=1, max_length=128, pattern=NAME_PATTERN, description="Caller-chosen id; generated if absent."
    )
    timeout_s: float | None = Field(default=None, gt=0, le=3600, description="Deadline for the handler, seconds.")
    idempotent: bool = Field(
        default=False, description="Safe to run twice: the Coordinator retries it if its replica dies mid-task."
    )


class TaskResult(BaseModel):
    """The one envelope returned for every task, success or failure."""

    task_id: str | None = None
    task_type: str | None = None
    success: bool
    result: Any = None
    error: ErrorInfo | None = None
    duration_ms: float = 0.0
    trace_id: str | None = None

    @classmethod
    def failure(
        cls,
        err: ServeflowError,
        *,
        task_id: str | None = None,
        task_type: str | None = None,
        duration_ms: float = 0.0,
        trace_id: str | None = None,
    ) -> TaskResult:
        return cls(
            task_id=task_id,
            task_type=task_type,
            success=False,
            error=ErrorInfo.from_error(err),
            duration_ms=duration_ms,
            trace_id=trace_id,
        )


class WorkItem(BaseModel):
    """What the Coordinator sends a HandlerWorker (internal, not a public API)."""

    task_id: str
    task_type: str
    payload: dict[str, Any]
    timeout_s: float
    trace_context: dict[str, str] = Field(default_factory=dict)


class HealthState(str, Enum):
    INITIALIZING = "initializing"
    HEALTHY = "healthy"
    DEGRADED = "degraded"
    UNHEALTHY = "unhealthy"


class ComponentStatus(BaseModel):
    """What every deployment's ``get_status()`` returns."""

    name: str
    status: HealthState
    error: str | None = None
    since: float | None = Field(default=None, description="Unix time the component entered this status.")
    details: dict[str, Any] = Field(default_factory=dict)
