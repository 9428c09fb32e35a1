"""OpenAPI 3.1 document for every HTTP route, generated from the route table and the
pydantic models (request bodies, queries, envelopes and the documents routes answer with).
"""

from __future__ import annotations

from typing import Any, Literal, Mapping, Sequence

from pydantic import BaseModel, ConfigDict, Field
from pydantic.json_schema import models_json_schema

from serve_app.core.models import NAME_PATTERN
from serve_app.ingress.operations import ROUTES
from serve_app.ingress.pipeline import Operation
from serve_app.workflow.api import WorkflowDocument

_REF = "#/components/schemas/{model}"


class _Doc(BaseModel):
    model_config = ConfigDict(extra="allow")


class Liveness(_Doc):
    status: Literal["alive"]


class Readiness(_Doc):
    status: Literal["ready"]
    pools: list[str]


class TaskTypes(_Doc):
    task_types: dict[str, str] = Field(description="task type -> pool")


class StatusDocument(_Doc):
    """The roll-up that ``serveflow status`` prints (components, pools, deployments, resources, tasks)."""

    status: Literal["initializing", "healthy", "degraded", "unhealthy"]
    components: dict[str, Any]
    pools: dict[str, Any]


class WorkflowList(_Doc):
    workflows: list[WorkflowDocument]


class OpenApiDocument(_Doc):
    openapi: str
    info: dict[str, Any]
    paths: dict[str, Any]


# Operations that answer with a document rather than an envelope: operationId -> its model.
_DOCUMENTS: dict[str, type[BaseModel]] = {
    "listTaskTypes": TaskTypes,
    "liveness": Liveness,
    "readiness": Readiness,
    "status": StatusDocument,
    "openapi": OpenApiDocument,
    "listWorkflows": WorkflowList,
    "getWorkflow": WorkflowDocument,
}
_PATH_PARAMS = {
    "name": {"type": "string", "minLength": 1, "maxLength": 128, "pattern": NAME_PATTERN},
    "run_id": {"type": "string", "minLength": 1, "maxLength": 128},
    "subscription": {"type": "string", "minLength": 1, "maxLength": 48, "pattern": NAME_PATTERN},
    "seq": {"type": "string", "minLength": 1, "maxLength": 18, "pattern": "^[0-9]+$"},
}


def _schemas(ops: Mapping[str, Operation]) -> dict[str, Any]:
    """Every body, envelope and document model the operations use (so none can be left out)."""
    bodies = {op.body for op in ops.values() if op.body is not None}
    answers = {op.envelope for op in ops.values()} | set(_DOCUMENTS.values())
    models: list[tuple[type[BaseModel], Literal["validation", "serialization"]]] = [
        *((m, "validation") for m in sorted(bodies, key=lambda m: m.__name__)),
        *((m, "serialization") for m in sorted(answers, key=lambda m: m.__name__)),
    ]
    _, defs = models_json_schema(models, ref_template=_REF)
    return dict(defs.get("$defs", {}))


def _content(model: type[BaseModel]) -> dict[str, Any]:
    return {"application/json": {"schema": {"$ref": _REF.format(model=model.__name__)}}}


def _parameters(path: str, query: type[BaseModel] | None, examples: Mapping[str, Sequence[str]]) -> list[dict[str, Any]]:
    params = []
    for name, schema in _PATH_PARAMS.items():
        if "{" + name + "}" in path:
            param = {"name": name, "in": "path", "required": True, "schema": schema}
            if examples.get(name):
                param["examples"] = {v: {"value": v} for v in examples[name]}
            params.append(param)
    if query is not None:
        props = query.model_json_schema()["properties"]
        params += [{"name": n, "in": "query", "required": False, "schema": s} for n, s in props.items()]
    return params


def openapi_schema(ops: Mapping[str, Operation], *, task_types: Sequence[str], workflows: Sequence[str]) -> dict[str, Any]:
    """The served document; the configured task types and workflows appear as examples."""
    schemas = _schemas(ops)
    if task_types:
        schemas["TaskRequest"]["properties"]["task_type"]["examples"] = list(task_types)
    paths: dict[str, dict[str, Any]] = {}
    for route in ROUTES:
        op = ops[route.operation]
        ok_model = _DOCUMENTS.get(op.name, op.envelope)
        responses = {str(code): {"description": "OK", "content": _content(ok_model)} for code in route.ok}
        responses.update({str(code): {"description": "Error envelope", "content": _content(op.envelope)} for code in route.errors})
        doc: dict[str, Any] = {"operationId": op.name, "summary": op.summary, "responses": responses}
        parameters = _parameters(route.path, op.query, {"name": workflows})
        if parameters:
            doc["parameters"] = parameters
        if op.body is not None:
            doc["requestBody"] = {"required": True, "content": _content(op.body)}
        paths.setdefault(route.path, {})[route.method.lower()] = doc
    return {
        "openapi": "3.1.0",
        "info": {"title": "serveflow", "version": "1", "description": "Task and workflow service on Ray Serve."},
        "paths": paths,
        "components": {"schemas": schemas},
    }

