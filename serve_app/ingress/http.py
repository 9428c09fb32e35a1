"""The HTTP ingress: a Starlette app over a Dispatcher, free of Ray.

Every answer is JSON; every error is the envelope with a status from
:mod:`serve_app.ingress.pipeline`. Nothing raised inside reaches Starlette's (or
Serve's) default 500 page.
"""

from __future__ import annotations

import json
from typing import Any, Awaitable, Callable

from pydantic import ValidationError
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from serve_app.runtime import tracing
from serve_app.ingress.auth import BearerAuth
from serve_app.runtime.dispatch import Dispatcher, ReadinessBoard
from serve_app.ingress.pipeline import classify, http_headers, http_status
from serve_app.core.errors import (
    InvalidRequest,
    MethodNotAllowed,
    NotFound,
    NotReady,
    PayloadTooLarge,
    ServeflowError,
    ValidationFailed,
)
from serve_app.core.models import TaskRequest, TaskResult
from serve_app.ingress.openapi import openapi_schema
from serve_app.runtime.runner import validation_details
from serve_app.workflow.api import RunResult, RunService, parse_start

StatusProvider = Callable[[], Awaitable[dict[str, Any]]]
Endpoint = Callable[[Request], Awaitable[Response]]


Envelope = TaskResult | RunResult

# Probes and the schema stay open when bearer auth is on.
PUBLIC_PATHS = frozenset({"/healthz", "/readyz", "/openapi.json"})


def envelope_response(result: Envelope, *, ok_status: int = 200) -> JSONResponse:
    """The HTTP answer for an envelope: ``ok_status`` on success, the mapped status otherwise."""
    body = result.model_dump(mode="json", exclude_none=isinstance(result, RunResult))
    if result.error is None:
        return JSONResponse(body, status_code=ok_status)
    headers = http_headers(result.error)
    if result.error.code == "unauthenticated":
        headers["WWW-Authenticate"] = "Bearer"
    return JSONResponse(body, status_code=http_status(result.error.code), headers=headers)


def error_response(err: ServeflowError, envelope: type[Envelope] = TaskResult) -> JSONResponse:
    result = envelope.failure(err)
    result.trace_id = result.trace_id or tracing.trace_id_hex()
    return envelope_response(result)


def guarded(endpoint: Endpoint, envelope: type[Envelope] = TaskResult) -> Endpoint:
    """Turn anything an endpoint raises into an envelope (one trace id, no traceback)."""

    async def wrapper(request: Request) -> Response:
        route = request.scope.get("route")
        name = f"HTTP {request.method} {getattr(route, 'path', request.url.path)}"
        # A caller's W3C traceparent header makes this request part of its trace.
        with tracing.start_span(name, carrier=dict(request.headers)):
            try:
                if request.url.path not in PUBLIC_PATHS:
                    auth: BearerAuth | None = getattr(request.app.state, "auth", None)
                    if auth is not None:
                        auth.check(request.headers.get("authorization"))
                return await endpoint(request)
            except Exception as exc:
                return error_response(classify(exc, trace_id=tracing.trace_id_hex()), envelope)

    wrapper.__name__ = endpoint.__name__
    wrapper.__doc__ = endpoint.__doc__
    return wrapper


def run_endpoint(endpoint: Endpoint) -> Endpoint:
    return guarded(endpoint, RunResult)


async def read_json_object(request: Request, limit: int) -> dict[str, Any]:
    """A JSON object body (empty body = {}); malformed JSON is 400."""
    body = await read_body(request, limit)
    if not body.strip():
        return {}
    try:
        doc = json.loads(body)
    except ValueError:
        raise InvalidRequest("request body is not valid JSON") from None
    if not isinstance(doc, dict):
        raise ValidationFailed("request body must be a JSON object")
    return doc


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, refusing more than ``limit`` bytes without buffering it all."""
    declared = request.headers.get("content-length")
    if declared is not None:
        try:
            too_big = int(declared) > limit
        except ValueError:
            raise InvalidRequest("Content-Length header is not a number") from None
        if too_big:
            raise PayloadTooLarge.over(limit)
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise PayloadTooLarge.over(limit)
    return bytes(body)


def parse_task_request(body: bytes) -> TaskRequest:
    """Parse a TaskRequest: malformed JSON is 400, a wrong shape is 422."""
    if not body.strip():
        raise InvalidRequest("request body is empty; expected a JSON object")
    try:
        return TaskRequest.model_validate_json(body)
    except ValidationError as exc:
        if any(e["type"] == "json_invalid" for e in exc.errors()):
            raise InvalidRequest("request body is not valid JSON") from None
        raise ValidationFailed("request does not match the TaskRequest schema", details=validation_details(exc)) from None


def build_http_app(
    dispatcher: Dispatcher,
    readiness: ReadinessBoard,
    status: StatusProvider,
    *,
    max_body_bytes: int,
    runs: RunService | None = None,
    auth: BearerAuth | None = None,
) -> Starlette:
    """The Starlette app served by the Coordinator."""

    schema_cache: dict[str, Any] = {}

    @guarded
    async def submit_task(request: Request) -> Response:
        """Run one task and wait for its envelope."""
        req = parse_task_request(await read_body(request, max_body_bytes))
        return envelope_response(await dispatcher.submit(req))

    @guarded
    async def list_task_types(request: Request) -> Response:
        return JSONResponse({"task_types": dispatcher.task_types})

    @guarded
    async def healthz(request: Request) -> Response:
        """Liveness: the Coordinator replica answers."""
        return JSONResponse({"status": "alive"})

    @guarded
    async def readyz(request: Request) -> Response:
        """Readiness: every pool can take work."""
        not_ready = readiness.not_ready_pools()
        if not_ready:
            err = NotReady("not every handler pool is ready", details={"pools": not_ready})
            return error_response(err)
        return JSONResponse({"status": "ready", "pools": sorted(readiness.snapshot()["pools"])})

    @guarded
    async def status_endpoint(request: Request) -> Response:
        """Detailed roll-up of every deployment and pool."""
        return JSONResponse(await status())

    @guarded
    async def openapi(request: Request) -> Response:
        if "doc" not in schema_cache:
            schema_cache["doc"] = openapi_schema(sorted(dispatcher.task_types))
        return JSONResponse(schema_cache["doc"])

    @run_endpoint
    async def list_workflows(request: Request) -> Response:
        return JSONResponse({"workflows": runs.definitions() if runs else []})

    def _runs() -> RunService:
        if runs is None:
            raise NotFound("workflows are not enabled")
        return runs

    @run_endpoint
    async def get_workflow(request: Request) -> Response:
        name = request.path_params["name"]
        for doc in _runs().definitions():
            if doc["name"] == name:
                return JSONResponse(doc)
        raise NotFound(f"unknown workflow {name!r}")

    @run_endpoint
    async def start_run(request: Request) -> Response:
        """Start a run: 202 while it runs (or with wait=true, 200 once finished)."""
        req = parse_start(await read_json_object(request, max_body_bytes))
        result = await _runs().start(request.path_params["name"], req)
        finished = result.run is not None and result.run["status"] in ("succeeded", "failed", "cancelled")
        return envelope_response(result, ok_status=200 if finished or not result.created else 202)

    @run_endpoint
    async def list_runs(request: Request) -> Response:
        q = request.query_params
        try:
            limit = int(q.get("limit", "50"))
        except ValueError:
            raise ValidationFailed("limit must be an integer") from None
        return envelope_response(await _runs().list(status=q.get("status"), workflow=q.get("workflow"), limit=limit))

    @run_endpoint
    async def get_run(request: Request) -> Response:
        return envelope_response(await _runs().get(request.path_params["run_id"]))

    @run_endpoint
    async def cancel_run(request: Request) -> Response:
        return envelope_response(await _runs().cancel(request.path_params["run_id"]))

    async def http_exception(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        err: ServeflowError
        if exc.status_code == 405:
            err = MethodNotAllowed(f"method {request.method} is not allowed on {request.url.path}")
        elif exc.status_code == 404:
            err = NotFound(f"no route for {request.url.path}")
        else:
            err = InvalidRequest(str(exc.detail))
        return error_response(err)

    routes = [
        Route("/v1/tasks", submit_task, methods=["POST"]),
        Route("/v1/task-types", list_task_types, methods=["GET"]),
        Route("/healthz", healthz, methods=["GET"]),
        Route("/readyz", readyz, methods=["GET"]),
        Route("/v1/status", status_endpoint, methods=["GET"]),
        Route("/openapi.json", openapi, methods=["GET"]),
        Route("/v1/workflows", list_workflows, methods=["GET"]),
        Route("/v1/workflows/{name}", get_workflow, methods=["GET"]),
        Route("/v1/workflows/{name}/runs", start_run, methods=["POST"]),
        Route("/v1/runs", list_runs, methods=["GET"]),
        Route("/v1/runs/{run_id}", get_run, methods=["GET"]),
        Route("/v1/runs/{run_id}/cancel", cancel_run, methods=["POST"]),
    ]
    app = Starlette(routes=routes, exception_handlers={HTTPException: http_exception})
    app.state.auth = auth
    return app

