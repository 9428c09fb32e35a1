"""Protocol-neutral workflow operations; the ingress pipeline calls these for HTTP and gRPC."""

from __future__ import annotations

import time
from typing import Any

from pydantic import Field

from serve_app.core import jsonio
from serve_app.core.errors import NotFound, ValidationFailed, classify
from serve_app.core.models import (
    DeadLettersQuery,
    EventRequest,
    EventResult,
    ListEventsQuery,
    ListRunsQuery,
    RunResult,
    ScheduleResult,
    SignalRequest,
    StartRunRequest,
)
from serve_app.runtime import tracing
from serve_app.workflow.engine import RunEngine
from serve_app.workflow.schedules import ScheduleRunner
from serve_app.workflow.spec import WorkflowSpec
from serve_app.workflow.store import RunStore
from serve_app.workflow.subscriptions import SubscriptionRunner
from serve_app.workflow.state import RunStatus


class RunService:
    """Start/get/cancel/list runs; answers are RunResult envelopes, failures raise ServeflowError."""

    def __init__(self, engine: RunEngine) -> None:
        self.engine = engine

    def _ok(self, started: float, **fields: Any) -> RunResult:
        return RunResult(
            success=True, duration_ms=(time.perf_counter() - started) * 1000.0, trace_id=tracing.trace_id_hex(), **fields
        )

    async def start(self, workflow: str, req: StartRunRequest) -> RunResult:
        """Start (or find, by idempotency key) a run. A failure after the run was stored says so:
        its error names the run, so a caller is never told "failed" about a run that exists."""
        started = time.perf_counter()
        run, created = await self.engine.start(
            workflow, req.input, idempotency_key=req.idempotency_key, priority=req.priority
        )
        try:
            if req.wait:
                run = await self.engine.wait(run.run_id, req.wait_timeout_s)
            return self._ok(started, run_id=run.run_id, workflow=run.workflow, created=created, run=run.public())
        except Exception as exc:
            err = classify(exc, trace_id=tracing.trace_id_hex())
            raise err.with_details(
                run_id=run.run_id, created=created, note="the run was accepted and is stored; read it with its run_id"
            ) from exc

    async def get(self, run_id: str) -> RunResult:
        started = time.perf_counter()
        run = await self.engine.get(run_id)
        return self._ok(started, run_id=run.run_id, workflow=run.workflow, run=run.public())

    async def cancel(self, run_id: str) -> RunResult:
        started = time.perf_counter()
        run = await self.engine.cancel(run_id)
        return self._ok(started, run_id=run.run_id, workflow=run.workflow, run=run.public())

    async def signal(self, run_id: str, name: str, req: SignalRequest) -> RunResult:
        started = time.perf_counter()
        run, created = await self.engine.signal(run_id, name, req.payload, signal_id=req.signal_id)
        return self._ok(started, run_id=run.run_id, workflow=run.workflow, created=created, run=run.public())

    async def list(self, query: ListRunsQuery) -> RunResult:
        started = time.perf_counter()
        status = RunStatus(query.status) if query.status else None
        runs = await self.engine.list(
            status=status, workflow=query.workflow, parent_run_id=query.parent_run_id, limit=query.limit, before=query.before
        )
        return self._ok(started, runs=[r.public() for r in runs])

    def definitions(self) -> list[dict[str, Any]]:
        return [_document(spec) for spec in self.engine.workflows.values()]

    def definition(self, name: str) -> dict[str, Any]:
        spec = self.engine.workflows.get(name)
        if spec is None:
            raise NotFound(f"unknown workflow {name!r}", details={"known_workflows": sorted(self.engine.workflows)})
        return _document(spec)


class WorkflowDocument(WorkflowSpec):
    """A definition as clients see it: the spec, plus each step's upstream steps worked out."""

    upstream: dict[str, list[str]] = Field(
        description="step -> the steps it waits for (depends_on, references, conditions, map lists): "
        "what a console draws the DAG from."
    )


class ScheduleService:
    """List, pause, resume and trigger schedules; answers are ScheduleResult envelopes."""

    def __init__(self, runner: ScheduleRunner) -> None:
        self.runner = runner

    def _ok(self, started: float, **fields: Any) -> ScheduleResult:
        return ScheduleResult(
            success=True, duration_ms=(time.perf_counter() - started) * 1000.0, trace_id=tracing.trace_id_hex(), **fields
        )

    async def _one(self, name: str) -> dict[str, Any]:
        return next(s for s in await self.runner.describe() if s["name"] == name)

    async def list(self) -> ScheduleResult:
        started = time.perf_counter()
        return self._ok(started, schedules=await self.runner.describe())

    async def pause(self, name: str, paused: bool = True) -> ScheduleResult:
        started = time.perf_counter()
        await self.runner.set_paused(name, paused)
        return self._ok(started, schedule=await self._one(name))

    async def trigger(self, name: str) -> ScheduleResult:
        started = time.perf_counter()
        run_id = await self.runner.trigger(name)
        return self._ok(started, schedule=await self._one(name), run_id=run_id)


class EventService:
    """Append and list events, list and replay dead letters; answers are EventResult envelopes."""

    def __init__(self, runner: SubscriptionRunner, store: RunStore) -> None:
        self.runner = runner
        self._store = store

    def _ok(self, started: float, **fields: Any) -> EventResult:
        return EventResult(success=True, duration_ms=(time.perf_counter() - started) * 1000.0, trace_id=tracing.trace_id_hex(), **fields)

    async def append(self, req: EventRequest) -> EventResult:
        started = time.perf_counter()
        jsonio.checked(req.payload, lambda why: ValidationFailed(f"event payload cannot be stored: {why}"))
        event, created = await self.runner.append(req.type, req.payload, key=req.key, event_id=req.id)
        return self._ok(started, event=event.public(), created=created)

    async def list(self, query: ListEventsQuery) -> EventResult:
        started = time.perf_counter()
        events = await self._store.read_events(query.after, [query.type] if query.type else None, query.limit)
        return self._ok(started, events=[e.public() for e in events])

    async def dead_letters(self, query: DeadLettersQuery) -> EventResult:
        started = time.perf_counter()
        return self._ok(started, dead_letters=await self._store.list_dead_letters(query.subscription, query.limit))

    async def replay(self, subscription: str, seq: str) -> EventResult:
        started = time.perf_counter()
        if not seq.isdigit() or len(seq) > 18:
            raise NotFound(f"no dead letter {seq!r}: a sequence number is a whole number")
        return self._ok(started, dead_letter=await self.runner.replay(subscription, int(seq)))


def _document(spec: WorkflowSpec) -> dict[str, Any]:
    deps = spec.dependencies()
    doc = WorkflowDocument(**dict(spec), upstream={name: sorted(deps[name]) for name in deps})
    return doc.model_dump(mode="json")

