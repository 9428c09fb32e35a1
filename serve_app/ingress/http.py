"""The HTTP adapter: Starlette routes over the one ingress pipeline, free of Ray.

Each route turns its request into an :class:`Inbound` and renders what the
pipeline returns; unmatched paths and methods go through the same pipeline (a
span, a trace id, the envelope). Nothing raised inside reaches Starlette's (or
Serve's) default 500 page.
"""

from __future__ import annotations

from typing import Any, Awaitable, Callable

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from serve_app.console import console_routes
from serve_app.core import codec, jsonio
from serve_app.core.errors import InvalidRequest
from serve_app.core.models import Envelope
from serve_app.ingress.auth import BearerAuth
from serve_app.ingress.openapi import openapi_schema
from serve_app.ingress.operations import ROUTES, Backend, HttpRoute, build_operations
from serve_app.ingress.pipeline import Inbound, Operation, Pipeline, failing, render

JSON = "application/json"


class HttpBody:
    """A request body read as a stream under the size limit, then decoded by the one JSON parser."""

    def __init__(self, request: Request) -> None:
        self._request = request

    async def read(self, limit: int) -> Any:
        declared = self._request.headers.get("content-length")
        if declared is not None:
            if not declared.isdigit():
                raise InvalidRequest("Content-Length header is not a number")
            jsonio.check_size(int(declared), limit)
        body = bytearray()
        async for chunk in self._request.stream():
            body += chunk
            jsonio.check_size(len(body), limit)
        return jsonio.decode(bytes(body)) if body.strip() else None


def encode(payload: Envelope | dict[str, Any], ok_status: int) -> Response:
    """An HTTP response for a reply: ``ok_status`` on success, the mapped status on failure."""
    text = render(payload)
    error = payload.error if isinstance(payload, Envelope) else None
    if error is None:
        return Response(text, status_code=ok_status, media_type=JSON)
    return Response(text, status_code=codec.http_status(error.code), headers=codec.http_headers(error), media_type=JSON)


def inbound(request: Request, span_name: str, params: dict[str, Any] | None = None) -> Inbound[Response]:
    return Inbound(
        protocol="http",
        span_name=span_name,
        metadata=dict(request.headers),
        encode=encode,
        params=request.path_params if params is None else params,
        query=dict(request.query_params),
        body=HttpBody(request),
    )


def _endpoint(pipeline: Pipeline, op: Operation, route: HttpRoute) -> Callable[[Request], Awaitable[Response]]:
    span_name = f"HTTP {route.method} {route.path}"

    async def endpoint(request: Request) -> Response:
        return await pipeline.handle(op, inbound(request, span_name))

    endpoint.__name__ = op.name
    return endpoint


def build_http_app(backend: Backend, *, max_body_bytes: int, auth: BearerAuth | None = None) -> Starlette:
    """The Starlette app served by the Coordinator."""
    pipeline = Pipeline(auth=auth, max_body_bytes=max_body_bytes)
    schema: dict[str, Any] = {}

    def openapi() -> dict[str, Any]:
        if not schema:
            names = sorted(backend.runs.engine.workflows) if backend.runs is not None else []
            schema.update(openapi_schema(ops, task_types=sorted(backend.dispatcher.task_types), workflows=names))
        return schema

    ops = build_operations(backend, openapi)

    async def unmatched(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        params = {"path": request.url.path, "method": request.method}
        if exc.status_code in (404, 405):
            op = ops["methodNotAllowed" if exc.status_code == 405 else "noRoute"]
        else:
            op = Operation("badRequest", failing(InvalidRequest(str(exc.detail))))
        response = await pipeline.handle(op, inbound(request, f"HTTP {request.method} (unmatched)", params))
        response.headers.update(exc.headers or {})  # e.g. Allow on a 405
        return response

    routes: list[BaseRoute] = [Route(r.path, _endpoint(pipeline, ops[r.operation], r), methods=[r.method]) for r in ROUTES]
    routes += console_routes()
    return Starlette(routes=routes, exception_handlers={HTTPException: unmatched})

