"""OpenAPI 3.1 document for the HTTP API, generated from the pydantic models."""

from __future__ import annotations

from typing import Any

from pydantic.json_schema import models_json_schema

from serve_app.core.models import TaskRequest, TaskResult

_REF = "#/components/schemas/{model}"


def _envelope_responses(*codes: int) -> dict[str, Any]:
    ref = {"$ref": "#/components/schemas/TaskResult"}
    return {str(c): {"description": "Result envelope", "content": {"application/json": {"schema": ref}}} for c in codes}


def openapi_schema(task_types: list[str]) -> dict[str, Any]:
    """The served OpenAPI document; ``task_types`` are listed as the allowed values."""
    _, defs = models_json_schema([(TaskRequest, "validation"), (TaskResult, "serialization")], ref_template=_REF)
    schemas = defs.get("$defs", {})
    if task_types and "TaskRequest" in schemas:
        schemas["TaskRequest"]["properties"]["task_type"]["examples"] = task_types
    json_object = {"application/json": {"schema": {"type": "object"}}}
    return {
        "openapi": "3.1.0",
        "info": {"title": "serveflow", "version": "1", "description": "Task and workflow service on Ray Serve."},
        "paths": {
            "/v1/tasks": {
                "post": {
                    "operationId": "submitTask",
                    "summary": "Run one task and wait for its result envelope",
                    "requestBody": {
                        "required": True,
                        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/TaskRequest"}}},
                    },
                    "responses": _envelope_responses(200, 400, 404, 413, 422, 500, 503, 504),
                }
            },
            "/v1/task-types": {
                "get": {
                    "operationId": "listTaskTypes",
                    "responses": {"200": {"description": "task type -> pool", "content": json_object}},
                }
            },
            "/healthz": {"get": {"operationId": "liveness", "responses": {"200": {"description": "alive", "content": json_object}}}},
            "/readyz": {
                "get": {
                    "operationId": "readiness",
                    "responses": {"200": {"description": "ready", "content": json_object}, **_envelope_responses(503)},
                }
            },
            "/v1/status": {
                "get": {"operationId": "status", "responses": {"200": {"description": "roll-up", "content": json_object}}}
            },
        },
        "components": {"schemas": schemas},
    }
