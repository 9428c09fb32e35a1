"""What the API does, protocol-neutral: one :class:`Operation` per action, and the HTTP
route table that the Starlette adapter and the OpenAPI document are both built from.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Awaitable, Callable

from serve_app.core.errors import MethodNotAllowed, NotFound, NotReady
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
    TaskRequest,
)
from serve_app.ingress.pipeline import Call, Operation, Reply
from serve_app.runtime.dispatch import Dispatcher, ReadinessBoard
from serve_app.workflow.api import EventService, RunService, ScheduleService

StatusProvider = Callable[[], Awaitable[dict[str, Any]]]


@dataclass(frozen=True)
class Backend:
    """The services behind the API (the Coordinator's, or in-process ones in tests)."""

    dispatcher: Dispatcher
    readiness: ReadinessBoard
    status: StatusProvider
    runs: RunService | None = None
    schedules: ScheduleService | None = None
    events: EventService | None = None


@dataclass(frozen=True)
class HttpRoute:
    method: str
    path: str
    operation: str
    ok: tuple[int, ...] = (200,)
    errors: tuple[int, ...] = ()


_BODY_ERRORS = (400, 413, 422)
_RUN_ERRORS = (404, 503)
ROUTES: tuple[HttpRoute, ...] = (
    # 200 also answers a task whose handler failed (success: false, code handler_error).
    HttpRoute("POST", "/v1/tasks", "submitTask", errors=(*_BODY_ERRORS, 404, 503, 504)),
    HttpRoute("GET", "/v1/task-types", "listTaskTypes"),
    HttpRoute("GET", "/healthz", "liveness"),
    HttpRoute("GET", "/readyz", "readiness", errors=(503,)),
    HttpRoute("GET", "/v1/status", "status"),
    HttpRoute("GET", "/openapi.json", "openapi"),
    HttpRoute("GET", "/v1/workflows", "listWorkflows", errors=(404,)),
    HttpRoute("GET", "/v1/workflows/{name}", "getWorkflow", errors=(404,)),
    HttpRoute("POST", "/v1/workflows/{name}/runs", "startRun", ok=(200, 202), errors=(*_BODY_ERRORS, 409, *_RUN_ERRORS, 504)),
    HttpRoute("GET", "/v1/runs", "listRuns", errors=(422, *_RUN_ERRORS)),
    HttpRoute("GET", "/v1/runs/{run_id}", "getRun", errors=_RUN_ERRORS),
    HttpRoute("POST", "/v1/runs/{run_id}/cancel", "cancelRun", errors=_RUN_ERRORS),
    HttpRoute("POST", "/v1/runs/{run_id}/signals/{name}", "signalRun", errors=(*_BODY_ERRORS, 409, *_RUN_ERRORS)),
    HttpRoute("POST", "/v1/events", "appendEvent", errors=(*_BODY_ERRORS, *_RUN_ERRORS)),
    HttpRoute("GET", "/v1/events", "listEvents", errors=(422, *_RUN_ERRORS)),
    HttpRoute("GET", "/v1/dead-letters", "listDeadLetters", errors=(422, *_RUN_ERRORS)),
    HttpRoute("POST", "/v1/dead-letters/{subscription}/{seq}/replay", "replayDeadLetter", errors=(409, *_RUN_ERRORS)),
    HttpRoute("GET", "/v1/schedules", "listSchedules", errors=_RUN_ERRORS),
    HttpRoute("POST", "/v1/schedules/{name}/pause", "pauseSchedule", errors=_RUN_ERRORS),
    HttpRoute("POST", "/v1/schedules/{name}/resume", "resumeSchedule", errors=_RUN_ERRORS),
    HttpRoute("POST", "/v1/schedules/{name}/trigger", "triggerSchedule", errors=(409, *_RUN_ERRORS)),
)


def _runs(backend: Backend) -> RunService:
    # The one answer for every workflow route when the app was built without runs.
    if backend.runs is None:
        raise NotFound("workflows are not enabled")
    return backend.runs


def _schedules(backend: Backend) -> ScheduleService:
    if backend.schedules is None:
        raise NotFound("schedules are not enabled")
    return backend.schedules


def _events(backend: Backend) -> EventService:
    if backend.events is None:
        raise NotFound("events are not enabled")
    return backend.events


def build_operations(backend: Backend, openapi: Callable[[], dict[str, Any]]) -> dict[str, Operation]:
    """Every operation of the API, by name (the OpenAPI operationId)."""

    async def submit_task(call: Call) -> Reply:
        return Reply(await backend.dispatcher.submit(call.body))

    async def list_task_types(call: Call) -> Reply:
        return Reply({"task_types": backend.dispatcher.task_types})

    async def liveness(call: Call) -> Reply:
        return Reply({"status": "alive"})

    async def readiness(call: Call) -> Reply:
        not_ready = backend.readiness.not_ready_pools()
        if not_ready:
            raise NotReady("not every handler pool is ready", details={"pools": not_ready})
        return Reply({"status": "ready", "pools": sorted(backend.readiness.snapshot()["pools"])})

    async def status(call: Call) -> Reply:
        return Reply(await backend.status())

    async def schema(call: Call) -> Reply:
        return Reply(openapi())

    async def list_workflows(call: Call) -> Reply:
        return Reply({"workflows": _runs(backend).definitions()})

    async def get_workflow(call: Call) -> Reply:
        return Reply(_runs(backend).definition(call.params["name"]))

    async def start_run(call: Call) -> Reply:
        result = await _runs(backend).start(call.params["name"], call.body)
        finished = result.run is not None and result.run["status"] in ("succeeded", "failed", "cancelled")
        return Reply(result, 200 if finished or not result.created else 202)

    async def list_runs(call: Call) -> Reply:
        return Reply(await _runs(backend).list(call.query))

    async def get_run(call: Call) -> Reply:
        return Reply(await _runs(backend).get(call.params["run_id"]))

    async def cancel_run(call: Call) -> Reply:
        return Reply(await _runs(backend).cancel(call.params["run_id"]))

    async def signal_run(call: Call) -> Reply:
        return Reply(await _runs(backend).signal(call.params["run_id"], call.params["name"], call.body))

    async def append_event(call: Call) -> Reply:
        return Reply(await _events(backend).append(call.body))

    async def list_events(call: Call) -> Reply:
        return Reply(await _events(backend).list(call.query))

    async def list_dead_letters(call: Call) -> Reply:
        return Reply(await _events(backend).dead_letters(call.query))

    async def replay_dead_letter(call: Call) -> Reply:
        return Reply(await _events(backend).replay(call.params["subscription"], str(call.params["seq"])))

    async def list_schedules(call: Call) -> Reply:
        return Reply(await _schedules(backend).list())

    async def pause_schedule(call: Call) -> Reply:
        return Reply(await _schedules(backend).pause(call.params["name"], True))

    async def resume_schedule(call: Call) -> Reply:
        return Reply(await _schedules(backend).pause(call.params["name"], False))

    async def trigger_schedule(call: Call) -> Reply:
        return Reply(await _schedules(backend).trigger(call.params["name"]))

    async def no_route(call: Call) -> Reply:
        raise NotFound(f"no route for {call.params['path']}")

    async def no_method(call: Call) -> Reply:
        raise MethodNotAllowed(f"method {call.params['method']} is not allowed on {call.params['path']}")

    ops = [
        Operation("submitTask", submit_task, body=TaskRequest, summary="Run one task and wait for its result envelope"),
        Operation("listTaskTypes", list_task_types, summary="Task types and the pool serving each"),
        Operation("liveness", liveness, public=True, summary="The Coordinator replica answers"),
        Operation("readiness", readiness, public=True, summary="Every handler pool can take work"),
        Operation("status", status, summary="Health roll-up of every deployment and pool"),
        Operation("openapi", schema, public=True, summary="This document"),
        Operation("listWorkflows", list_workflows, RunResult, summary="Workflow definitions"),
        Operation("getWorkflow", get_workflow, RunResult, summary="One workflow definition"),
        Operation("startRun", start_run, RunResult, body=StartRunRequest, summary="Start a run (202), or wait for it (200)"),
        Operation("listRuns", list_runs, RunResult, query=ListRunsQuery, summary="Recent runs, newest first"),
        Operation("getRun", get_run, RunResult, summary="A run with per-step state"),
        Operation("cancelRun", cancel_run, RunResult, summary="Cancel a run; idempotent"),
        Operation(
            "signalRun", signal_run, RunResult, body=SignalRequest, summary="Deliver a named signal to a run (kept until a step takes it)"
        ),
        Operation("appendEvent", append_event, EventResult, body=EventRequest, summary="Append an event to the log"),
        Operation("listEvents", list_events, EventResult, query=ListEventsQuery, summary="Events in log order"),
        Operation("listDeadLetters", list_dead_letters, EventResult, query=DeadLettersQuery, summary="Events a subscription gave up on"),
        Operation("replayDeadLetter", replay_dead_letter, EventResult, summary="Deliver a dead letter again"),
        Operation("listSchedules", list_schedules, ScheduleResult, summary="Schedules with their next fire time"),
        Operation("pauseSchedule", pause_schedule, ScheduleResult, summary="Pause a schedule (no ticks fire)"),
        Operation("resumeSchedule", resume_schedule, ScheduleResult, summary="Resume a schedule (per its catch_up)"),
        Operation("triggerSchedule", trigger_schedule, ScheduleResult, summary="Start a run of a schedule now"),
        Operation("noRoute", no_route),
        Operation("methodNotAllowed", no_method),
    ]
    return {op.name: op for op in ops}
