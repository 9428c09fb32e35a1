"""Wire models shared by every protocol: requests, the result envelope, status."""

from __future__ import annotations

from enum import Enum
from typing import Any, Literal

from typing_extensions import Self

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, field_validator

from serve_app.core import jsonio
from serve_app.core.errors import ServeflowError

NAME_PATTERN = r"^[A-Za-z0-9_.\-]+$"


class ErrorInfo(BaseModel):
    """The error part of an envelope: what went wrong, never how (no traceback)."""

    code: str = Field(description="Stable error code, e.g. 'validation_error'.")
    message: str = Field(description="Human readable message.")
    retryable: bool = Field(description="Whether the same request may succeed if retried.")
    details: dict[str, Any] = Field(default_factory=dict, description="Structured, JSON-safe details.")

    @field_validator("message", "details", mode="after")
    @classmethod
    def _renderable(cls, value: Any) -> Any:
        # Messages quote handler exceptions; whatever they hold, the envelope must render.
        return jsonio.repair(value)

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


class Envelope(BaseModel):
    """What every answer shares, success or failure. Every field is always rendered (null when
    unset), the same way for tasks and runs, over HTTP and in the gRPC trailer."""

    success: bool
    error: ErrorInfo | None = None
    duration_ms: float = 0.0
    trace_id: str | None = None

    @classmethod
    def failure(cls, err: ServeflowError, **fields: Any) -> Self:
        """The failure answer for ``err``; ``fields`` fill in what is known (ids, duration)."""
        return cls(success=False, error=ErrorInfo.from_error(err), **fields)


class TaskResult(Envelope):
    """The one envelope returned for every task, success or failure."""

    task_id: str | None = None
    task_type: str | None = None
    result: Any = None
    # A workflow step's result kept in Ray's object store: ``result`` is its marker
    # (:mod:`serve_app.core.result_refs`) and this the object reference. Never rendered.
    _object_ref: Any = PrivateAttr(None)


class StartRunRequest(BaseModel):
    """Body of POST /v1/workflows/{name}/runs (gRPC StartRun)."""

    model_config = ConfigDict(extra="forbid")

    input: dict[str, Any] = Field(default_factory=dict, description="The run input, referenced as ${input.x}.")
    idempotency_key: str | None = Field(
        None, min_length=1, max_length=128, pattern=NAME_PATTERN, description="Same key -> same run, no duplicate work."
    )
    wait: bool = Field(False, description="Wait for the run to finish (up to wait_timeout_s) before answering.")
    wait_timeout_s: float = Field(60.0, gt=0, le=600)
    priority: int | None = Field(
        None, ge=1, le=3, description="1-3, 3 first: orders queued runs and waiting steps; default: the workflow's."
    )


class SignalRequest(BaseModel):
    """Body of POST /v1/runs/{run_id}/signals/{name} (gRPC SendSignal)."""

    model_config = ConfigDict(extra="forbid")

    payload: Any = Field(None, description="Any JSON value: the result of the step that waits for the signal.")
    signal_id: str | None = Field(
        None, min_length=1, max_length=128, pattern=NAME_PATTERN, description="The same id again is ignored (created: false)."
    )


class ListRunsQuery(BaseModel):
    """Query of GET /v1/runs (gRPC ListRuns). Unknown parameters are ignored (cache busters)."""

    status: Literal["queued", "pending", "running", "succeeded", "failed", "cancelled"] | None = Field(
        None, description="Only runs in this status."
    )
    workflow: str | None = Field(None, min_length=1, max_length=128, pattern=NAME_PATTERN, description="Only this workflow.")
    parent_run_id: str | None = Field(
        None, min_length=1, max_length=128, pattern=NAME_PATTERN, description="Only the child runs of this run."
    )
    limit: int = Field(50, ge=1, le=1000, description="At most this many runs, newest first.")
    before: float | None = Field(
        None, ge=0, le=1e11, description="Paging: only runs created before this time (the last created_at of the previous page)."
    )


class RunResult(Envelope):
    """The envelope of every workflow-run answer."""

    run_id: str | None = None
    workflow: str | None = None
    created: bool | None = Field(None, description="On start: false when an idempotency key returned an existing run.")
    run: dict[str, Any] | None = None
    runs: list[dict[str, Any]] | None = None


class EventRequest(BaseModel):
    """Body of POST /v1/events (gRPC AppendEvent)."""

    model_config = ConfigDict(extra="forbid")

    type: str = Field(min_length=1, max_length=128, pattern=NAME_PATTERN, description="What happened, e.g. order.placed.")
    key: str | None = Field(None, min_length=1, max_length=256, description="Events of one key are delivered in order.")
    id: str | None = Field(
        None, min_length=1, max_length=64, pattern=NAME_PATTERN, description="The same id again appends nothing (created: false)."
    )
    payload: Any = Field(None, description="Any JSON value.")


class ListEventsQuery(BaseModel):
    """Query of GET /v1/events (gRPC ListEvents)."""

    type: str | None = Field(None, min_length=1, max_length=128, pattern=NAME_PATTERN)
    after: int = Field(0, ge=0, le=2**62, description="Only events after this sequence number (paging).")
    limit: int = Field(100, ge=1, le=1000)


class DeadLettersQuery(BaseModel):
    """Query of GET /v1/dead-letters (gRPC ListDeadLetters)."""

    subscription: str | None = Field(None, min_length=1, max_length=48, pattern=NAME_PATTERN)
    limit: int = Field(100, ge=1, le=1000)


class EventResult(Envelope):
    """The envelope of every event answer."""

    event: dict[str, Any] | None = None
    created: bool | None = Field(None, description="On append: false when the id was appended before.")
    events: list[dict[str, Any]] | None = None
    dead_letters: list[dict[str, Any]] | None = None
    dead_letter: dict[str, Any] | None = Field(None, description="On replay: the dead letter, delivered again.")


class ScheduleResult(Envelope):
    """The envelope of every schedule answer."""

    schedules: list[dict[str, Any]] | None = None
    schedule: dict[str, Any] | None = None
    run_id: str | None = Field(None, description="On trigger: the run started.")


class WorkItem(BaseModel):
    """What the Coordinator sends a HandlerWorker (internal, not a public API)."""

    task_id: str
    task_type: str
    payload: dict[str, Any]
    timeout_s: float
    trace_context: dict[str, str] = Field(default_factory=dict)
    # Workflow steps only: keep a result larger than this (or one that is not JSON) in Ray's
    # object store and answer with its marker; None: the result travels inline.
    by_ref_over: int | None = None
    # False when no later step reads the result (only the output or nobody): a result kept by
    # reference is then answered with its marker alone, and no object is made.
    keep_object: bool = True
    # True when a step that reads the result is served by this pool: the worker may also hold a
    # ``bytes`` result for a moment, so that a reader on the same replica takes it without a
    # copy out of the object store (serve_app.runtime.recent).
    keep_local: bool = False
    # True when the result's one reader is sent to the replica that made it (a one-to-one
    # hand-off in this pool, which holds results: ``reuse_results_bytes``): a result kept by
    # reference then stays in that process, named by a ``result_refs.local_handle`` in place of
    # an object reference (``bytes`` alone, with no copy; else its reference to the object store's
    # copy), so no ObjectRef comes back.
    hand_off: bool = False
    # Object references of upstream results kept by reference, by producing step: the worker
    # puts each value where its marker stands in the payload. Travels beside the JSON body.
    refs: dict[str, Any] = Field(default_factory=dict, exclude=True)
    # Routing key (run id and maker) of a call that makes a result a step of its pool reads, or reads
    # one: the pool's router sends every call with the same key to the same replica, so a reader
    # finds the maker's value in that process (serve_app.runtime.affinity). Not sent to the worker.
    affinity: str | None = Field(None, exclude=True)

    @property
    def moves_object_refs(self) -> bool:
        """ObjectRefs go in (``refs``: names of results held in a worker are plain text) or may
        come back (a result kept by reference that a later step reads, except a hand-off's): the
        call must be one on which Ray counts references."""
        return any(not isinstance(ref, str) for ref in self.refs.values()) or (
            self.by_ref_over is not None and self.keep_object and not self.hand_off
        )


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
