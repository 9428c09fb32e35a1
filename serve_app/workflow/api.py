"""Protocol-neutral workflow operations; HTTP and gRPC both call these."""

from __future__ import annotations

import time
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from serve_app.runtime import tracing
from serve_app.core.errors import ServeflowError, ValidationFailed
from serve_app.core.models import NAME_PATTERN, ErrorInfo
from serve_app.runtime.runner import validation_details
from serve_app.workflow.engine import RunEngine
from serve_app.workflow.state import RunStatus


class StartRunRequest(BaseModel):
    """Body of POST /v1/workflows/{name}/runs."""

    model_config = ConfigDict(extra="forbid")

    input: dict[str, Any] = Field(default_factory=dict, description="The run input, referenced as ${input.x}.")
    idempotency_key: str | None = Field(
        None, min_length=1, max_length=128, pattern=NAME_PATTERN, description="Same key -> same run, no duplicate work."
    )
    wait: bool = Field(False, description="Wait for the run to finish (up to wait_timeout_s) before answering.")
    wait_timeout_s: float = Field(60.0, gt=0, le=600)


class RunResult(BaseModel):
    """The envelope of every workflow-run answer."""

    run_id: str | None = None
    workflow: str | None = None
    success: bool
    created: bool | None = Field(None, description="On start: false when an idempotency key returned an existing run.")
    run: dict[str, Any] | None = None
    runs: list[dict[str, Any]] | None = None
    error: ErrorInfo | None = None
    duration_ms: float = 0.0
    trace_id: str | None = None

    @classmethod
    def failure(cls, err: ServeflowError, **fields: Any) -> RunResult:
        return cls(success=False, error=ErrorInfo.from_error(err), trace_id=tracing.trace_id_hex(), **fields)


def parse_start(raw: dict[str, Any]) -> StartRunRequest:
    try:
        return StartRunRequest.model_validate(raw)
    except ValidationError as exc:
        raise ValidationFailed("request does not match the StartRunRequest schema", details=validation_details(exc)) from None


def parse_status(raw: str | None) -> RunStatus | None:
    if not raw:
        return None
    try:
        return RunStatus(raw)
    except ValueError:
        raise ValidationFailed(
            f"unknown run status {raw!r}", details={"allowed": [s.value for s in RunStatus]}
        ) from None


class RunService:
    """Start/get/cancel/list runs; answers are RunResult envelopes, failures raise ServeflowError."""

    def __init__(self, engine: RunEngine) -> None:
        self.engine = engine

    def _ok(self, started: float, **fields: Any) -> RunResult:
        return RunResult(
            success=True, duration_ms=(time.perf_counter() - started) * 1000.0, trace_id=tracing.trace_id_hex(), **fields
        )

    async def start(self, workflow: str, req: StartRunRequest) -> RunResult:
        started = time.perf_counter()
        run, created = await self.engine.start(workflow, req.input, idempotency_key=req.idempotency_key)
        if req.wait:
            run = await self.engine.wait(run.run_id, req.wait_timeout_s)
        return self._ok(started, run_id=run.run_id, workflow=run.workflow, created=created, run=run.public())

    async def get(self, run_id: str) -> RunResult:
        started = time.perf_counter()
        run = await self.engine.get(run_id)
        return self._ok(started, run_id=run.run_id, workflow=run.workflow, run=run.public())

    async def cancel(self, run_id: str) -> RunResult:
        started = time.perf_counter()
        run = await self.engine.cancel(run_id)
        return self._ok(started, run_id=run.run_id, workflow=run.workflow, run=run.public())

    async def list(self, *, status: str | None, workflow: str | None, limit: int) -> RunResult:
        started = time.perf_counter()
        if not 1 <= limit <= 1000:
            raise ValidationFailed("limit must be between 1 and 1000")
        runs = await self.engine.list(status=parse_status(status), workflow=workflow or None, limit=limit)
        return self._ok(started, runs=[r.public() for r in runs])

    def definitions(self) -> list[dict[str, Any]]:
        return [spec.model_dump(mode="json") for spec in self.engine.workflows.values()]
