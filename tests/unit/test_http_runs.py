"""Workflow endpoints over HTTP with the real engine, store and handlers (no Ray)."""

from __future__ import annotations

import asyncio
import time
from typing import Any, Iterator

import pytest
from starlette.testclient import TestClient

from serve_app.runtime.config import AppConfig
from serve_app.ingress.http import build_http_app
from serve_app.ingress.operations import Backend
from serve_app.testing import in_process_dispatcher
from serve_app.workflow.api import RunService
from serve_app.workflow.engine import RunEngine
from serve_app.workflow.store import SqliteRunStore
from tests.unit.test_workflow_engine import WORKFLOWS


async def _status() -> dict[str, Any]:
    return {"status": "healthy"}


@pytest.fixture
def client(config: AppConfig, tmp_path: Any) -> Iterator[TestClient]:
    dispatcher, board, pools = in_process_dispatcher(config)
    store = SqliteRunStore(str(tmp_path / "runs.sqlite3"))
    runs = RunService(RunEngine(store, dispatcher.submit, WORKFLOWS, owner="t", lease_s=5))
    app = build_http_app(Backend(dispatcher, board, _status, runs), max_body_bytes=config.max_body_bytes)
    with TestClient(app) as c:
        yield c
    asyncio.run(store.close())
    pools.close()


def _wait_done(client: TestClient, run_id: str) -> dict[str, Any]:
    for _ in range(200):
        body = client.get(f"/v1/runs/{run_id}").json()
        if body["run"]["status"] in ("succeeded", "failed", "cancelled"):
            return body
        time.sleep(0.05)
    raise AssertionError("run did not finish")


def test_start_async_then_get(client: TestClient) -> None:
    r = client.post("/v1/workflows/diamond/runs", json={"input": {"text": "hi", "n": 7}})
    assert r.status_code == 202, r.text
    body = r.json()
    assert body["success"] and body["created"] is True and body["run"]["status"] in ("pending", "running")
    done = _wait_done(client, body["run_id"])
    assert done["run"]["output"] == {"fib": 13, "echo": "hi"}, (done["run"]["error"], done["run"]["steps"])
    assert all(s["duration_ms"] is not None for s in done["run"]["steps"])


def test_start_and_wait(client: TestClient) -> None:
    r = client.post("/v1/workflows/diamond/runs", json={"input": {"text": "x", "n": 1}, "wait": True})
    assert r.status_code == 200 and r.json()["run"]["status"] == "succeeded"


def test_idempotency_over_http(client: TestClient) -> None:
    body = {"input": {"text": "x", "n": 1}, "idempotency_key": "order-42"}
    first = client.post("/v1/workflows/diamond/runs", json=body)
    again = client.post("/v1/workflows/diamond/runs", json=body)
    assert first.status_code == 202 and again.status_code == 200
    assert again.json()["created"] is False and again.json()["run_id"] == first.json()["run_id"]
    clash = client.post("/v1/workflows/diamond/runs", json={**body, "input": {"text": "y", "n": 1}})
    assert clash.status_code == 409 and clash.json()["error"]["code"] == "conflict"


@pytest.mark.parametrize(
    "path, body, status, code",
    [
        ("/v1/workflows/nope/runs", {}, 404, "not_found"),
        ("/v1/workflows/diamond/runs", {"inputs": {}}, 422, "validation_error"),
        ("/v1/workflows/diamond/runs", {"wait_timeout_s": -1}, 422, "validation_error"),
        ("/v1/workflows/diamond/runs", "[1]", 422, "validation_error"),
        ("/v1/workflows/diamond/runs", "{bad", 400, "invalid_request"),
    ],
)
def test_start_errors(client: TestClient, path: str, body: Any, status: int, code: str) -> None:
    kw = {"content": body} if isinstance(body, str) else {"json": body}
    r = client.post(path, **kw)
    assert r.status_code == status and r.json()["error"]["code"] == code and r.json()["success"] is False


def test_cancel_list_and_missing(client: TestClient) -> None:
    run_id = client.post("/v1/workflows/long/runs", json={}).json()["run_id"]
    time.sleep(0.2)
    cancelled = client.post(f"/v1/runs/{run_id}/cancel")
    assert cancelled.status_code == 200 and cancelled.json()["run"]["status"] == "cancelled"
    listed = client.get("/v1/runs", params={"status": "cancelled"}).json()
    assert [r["run_id"] for r in listed["runs"]] == [run_id]
    assert client.get("/v1/runs", params={"status": "weird"}).status_code == 422
    assert client.get("/v1/runs/nope").status_code == 404
    assert client.post("/v1/runs/nope/cancel").json()["error"]["code"] == "not_found"


def test_definitions(client: TestClient) -> None:
    names = [w["name"] for w in client.get("/v1/workflows").json()["workflows"]]
    assert "diamond" in names
    assert client.get("/v1/workflows/diamond").json()["steps"][0]["name"] == "a"
    assert client.get("/v1/workflows/unknown").status_code == 404
