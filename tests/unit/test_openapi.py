"""The served OpenAPI document: every route, generated from the models, valid OpenAPI 3.1."""

from __future__ import annotations

from typing import Any, Iterator

import pytest
from openapi_spec_validator import validate
from starlette.routing import Route
from starlette.testclient import TestClient

from serve_app.ingress.http import build_http_app
from serve_app.ingress.operations import ROUTES, Backend
from serve_app.runtime.config import AppConfig
from serve_app.testing import in_process_dispatcher
from serve_app.workflow.api import RunService
from serve_app.workflow.engine import RunEngine
from serve_app.workflow.store import MemoryRunStore
from tests.unit.test_workflow_engine import WORKFLOWS


async def _status() -> dict[str, Any]:
    return {"status": "healthy", "components": {}, "pools": {}}


@pytest.fixture
def app_and_doc(config: AppConfig) -> Iterator[tuple[Any, dict[str, Any]]]:
    dispatcher, board, pools = in_process_dispatcher(config)
    runs = RunService(RunEngine(MemoryRunStore(), dispatcher.submit, WORKFLOWS, owner="t"))
    app = build_http_app(Backend(dispatcher, board, _status, runs), max_body_bytes=config.max_body_bytes)
    with TestClient(app) as c:
        yield app, c.get("/openapi.json").json()
    pools.close()


def test_the_document_is_valid_openapi_31(app_and_doc: tuple[Any, dict[str, Any]]) -> None:
    _, doc = app_and_doc
    assert doc["openapi"] == "3.1.0"
    validate(doc)


def test_every_route_is_documented_and_nothing_else(app_and_doc: tuple[Any, dict[str, Any]]) -> None:
    app, doc = app_and_doc
    served = {(m, r.path) for r in app.routes if isinstance(r, Route) for m in (r.methods or ()) if m != "HEAD"}
    documented = {(m.upper(), path) for path, ops in doc["paths"].items() for m in ops}
    console = {(m, p) for m, p in served if p == "/ui" or p.startswith("/ui/")}  # the web console's files, not API
    assert console == {("GET", "/ui"), ("GET", "/ui/"), ("GET", "/ui/console.js"), ("GET", "/ui/console.css")}
    assert served - console == documented == {(r.method, r.path) for r in ROUTES}


def test_bodies_and_answers_come_from_the_models(app_and_doc: tuple[Any, dict[str, Any]]) -> None:
    _, doc = app_and_doc
    schemas = doc["components"]["schemas"]
    start = doc["paths"]["/v1/workflows/{name}/runs"]["post"]
    assert start["requestBody"]["content"]["application/json"]["schema"]["$ref"].endswith("/StartRunRequest")
    assert start["responses"]["202"]["content"]["application/json"]["schema"]["$ref"].endswith("/RunResult")
    assert {p["name"] for p in doc["paths"]["/v1/runs"]["get"]["parameters"]} == {"status", "workflow", "parent_run_id", "limit", "before"}
    assert set(start["parameters"][0]["examples"]) == set(WORKFLOWS)
    assert schemas["StartRunRequest"]["properties"]["wait_timeout_s"]["maximum"] == 600
    assert "echo" in schemas["TaskRequest"]["properties"]["task_type"]["examples"]
    for path, ops in doc["paths"].items():
        for method, op in ops.items():
            assert op["operationId"] and op["responses"], (method, path)
            for code, response in op["responses"].items():
                if int(code) >= 400:  # every failure is an envelope
                    ref = response["content"]["application/json"]["schema"]["$ref"]
                    assert ref.endswith(("/TaskResult", "/RunResult", "/ScheduleResult", "/EventResult")), (method, path, code)
                    assert ref.rsplit("/", 1)[1] in schemas, ref  # every model it names is in the document
