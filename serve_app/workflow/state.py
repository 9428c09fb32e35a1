"""Run and step state: what the store persists and the API returns."""

from __future__ import annotations

from enum import Enum
from typing import Any

from pydantic import BaseModel, Field

from serve_app.core.models import ErrorInfo


class RunStatus(str, Enum):
    QUEUED = "queued"  # waiting for its concurrency key's slot; nobody drives it yet
    PENDING = "pending"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def terminal(self) -> bool:
        return self in (RunStatus.SUCCEEDED, RunStatus.FAILED, RunStatus.CANCELLED)


class StepStatus(str, Enum):
    PENDING = "pending"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    SKIPPED = "skipped"
    CANCELLED = "cancelled"

    @property
    def terminal(self) -> bool:
        return self not in (StepStatus.PENDING, StepStatus.RUNNING)


FAILED_ITEMS_SHOWN = 20


class MapProgress(BaseModel):
    """How far a map step has got; each element is durable on its own."""

    total: int
    succeeded: int = 0
    failed: int = 0
    failed_items: list[dict[str, Any]] = Field(
        default_factory=list, description=f"The first {FAILED_ITEMS_SHOWN} failed elements: index and error."
    )

    @property
    def done(self) -> int:
        return self.succeeded + self.failed


class StepState(BaseModel):
    name: str
    task_type: str  # what the step runs: a task type, or workflow:<name> for a child workflow
    status: StepStatus = StepStatus.PENDING
    attempts: int = 0
    started_at: float | None = None
    finished_at: float | None = None
    result: Any = None
    error: ErrorInfo | None = None
    map: MapProgress | None = None
    child_run_id: str | None = None
    wake_at: float | None = Field(None, description="A sleep's end, or a signal wait's deadline (Unix time).")

    @property
    def duration_ms(self) -> float | None:
        if self.started_at is None or self.finished_at is None:
            return None
        return (self.finished_at - self.started_at) * 1000.0


class RunState(BaseModel):
    run_id: str
    workflow: str
    status: RunStatus = RunStatus.PENDING
    input: dict[str, Any] = Field(default_factory=dict)
    output: Any = None
    error: ErrorInfo | None = None
    idempotency_key: str | None = None
    created_at: float
    started_at: float | None = None
    finished_at: float | None = None
    trace_id: str | None = None
    parent_run_id: str | None = None
    parent_step: str | None = None
    concurrency_key: str | None = None
    priority: int = 1
    queue_position: int | None = Field(None, description="While queued: 1 = next to run for its concurrency key.")
    steps: list[StepState] = Field(default_factory=list)

    def step(self, name: str) -> StepState:
        for s in self.steps:
            if s.name == name:
                return s
        raise KeyError(name)

    def public(self) -> dict[str, Any]:
        """JSON for clients: steps carry their duration."""
        doc = self.model_dump(mode="json")
        for step, out in zip(self.steps, doc["steps"], strict=True):
            out["duration_ms"] = step.duration_ms
            if step.map is not None:
                out["map"]["done"] = step.map.done
        return doc
