"""The HTTP layer with the real dispatcher and real handlers, in-process (no Ray)."""

from __future__ import annotations

import json
from typing import Any, Iterator

import pytest
from starlette.testclient import TestClient

from serve_app.runtime.config import AppConfig
from serve_app.ingress.http import build_http_app
from serve_app.ingress.operations import Backend
from serve_app.testing import in_process_dispatcher


async def _status() -> dict[str, Any]:
    return {"status": "healthy"}


@pytest.fixture
def client(config: AppConfig) -> Iterator[TestClient]:
    dispatcher, board, pools = in_process_dispatcher(config)
    app = build_http_app(Backend(dispatcher, board, _status), max_body_bytes=config.max_body_bytes)
    with TestClient(app, raise_server_exceptions=False) as c:
        yield c
    pools.close()


def _assert_envelope(body: dict[str, Any], code: str | None) -> None:
    assert set(body) == {"task_id", "task_type", "success", "result", "error", "duration_ms", "trace_id"}
    if code is None:
        assert body["success"] is True and body["error"] is None
    else:
        assert body["success"] is False and body["error"]["code"] == code
        assert "Traceback" not in json.dumps(body)


def test_success(client: TestClient) -> None:
    r = client.post("/v1/tasks", json={"task_type": "echo", "payload": {"message": "hi"}, "task_id": "my-id"})
    assert r.status_code == 200
    body = r.json()
    _assert_envelope(body, None)
    assert body["result"] == {"message": "hi"} and body["task_id"] == "my-id"
    assert len(body["trace_id"]) == 32 and body["duration_ms"] > 0


@pytest.mark.parametrize(
    "raw, status, code",
    [
        (b"{not json", 400, "invalid_request"),
        (b"", 422, "validation_error"),  # an empty body is {}: task_type is missing
        (b"[1,2]", 422, "validation_error"),
        (b'{"task_type": "echo", "extra": 1}', 422, "validation_error"),
        (b'{"task_type": "bad type!"}', 422, "validation_error"),
        (b'{"task_type": "echo", "timeout_s": -1}', 422, "validation_error"),
        (b'{"task_type": "echo", "payload": {"message": 3}}', 422, "validation_error"),
        (b'{"task_type": "nope"}', 404, "unknown_task_type"),
        (b'{"task_type": "fail"}', 200, "handler_error"),  # the task ran; its failure is in the envelope
        (b'{"task_type": "sleep", "payload": {"seconds": 2}, "timeout_s": 0.05}', 504, "timeout"),
    ],
)
def test_error_classes(client: TestClient, raw: bytes, status: int, code: str) -> None:
    r = client.post("/v1/tasks", content=raw, headers={"content-type": "application/json"})
    assert r.status_code == status, r.text
    _assert_envelope(r.json(), code)


def test_body_limit(client: TestClient) -> None:
    r = client.post("/v1/tasks", content=b"x" * 5000)
    assert r.status_code == 413
    _assert_envelope(r.json(), "payload_too_large")

    def chunks() -> Iterator[bytes]:  # no Content-Length: streamed and cut off
        for _ in range(10):
            yield b"x" * 1000

    r = client.post("/v1/tasks", content=chunks())
    assert r.status_code == 413


def test_routing_errors_are_enveloped(client: TestClient) -> None:
    r = client.get("/nowhere")
    assert r.status_code == 404
    _assert_envelope(r.json(), "not_found")
    r = client.get("/v1/tasks")
    assert r.status_code == 405
    _assert_envelope(r.json(), "method_not_allowed")


def test_not_ready_before_readiness_known(config: AppConfig) -> None:
    dispatcher, board, pools = in_process_dispatcher(config, ready=False)
    app = build_http_app(Backend(dispatcher, board, _status), max_body_bytes=config.max_body_bytes)
    with TestClient(app) as c:
        r = c.post("/v1/tasks", json={"task_type": "echo", "payload": {"message": "x"}})
        assert r.status_code == 503 and r.headers["retry-after"] == "1"
        _assert_envelope(r.json(), "not_ready")
        assert r.json()["error"]["retryable"] is True
        assert c.get("/readyz").status_code == 503
        board.update({**pools.readiness_report(), "compute": {"ready": False, "status": "initializing"}})
        assert c.post("/v1/tasks", json={"task_type": "echo", "payload": {"message": "x"}}).status_code == 200
        r = c.post("/v1/tasks", json={"task_type": "fib", "payload": {"n": 3}})
        assert r.status_code == 503 and r.json()["error"]["details"]["pool"] == "compute"
        assert c.get("/readyz").json()["error"]["details"]["pools"] == {"compute": "initializing"}
    pools.close()


def test_unexpected_exception_becomes_internal(config: AppConfig) -> None:
    dispatcher, board, pools = in_process_dispatcher(config)

    async def broken_status() -> dict[str, Any]:
        raise RuntimeError("/internal/path/secret.py exploded")

    app = build_http_app(Backend(dispatcher, board, broken_status), max_body_bytes=config.max_body_bytes)
    with TestClient(app, raise_server_exceptions=False) as c:
        r = c.get("/v1/status")
    assert r.status_code == 500
    body = r.json()
    _assert_envelope(body, "internal")
    assert "secret" not in r.text
    pools.close()


def test_health_and_status(client: TestClient) -> None:
    assert client.get("/healthz").json() == {"status": "alive"}
    r = client.get("/readyz")
    assert r.status_code == 200 and r.json()["pools"] == ["compute", "fragile", "general"]
    assert client.get("/v1/status").json() == {"status": "healthy"}
    assert client.get("/v1/task-types").json()["task_types"]["fib"] == "compute"


def test_openapi_schema(client: TestClient) -> None:
    doc = client.get("/openapi.json").json()
    assert doc["openapi"].startswith("3.")
    assert "/v1/tasks" in doc["paths"]
    assert {"TaskRequest", "TaskResult", "ErrorInfo"} <= set(doc["components"]["schemas"])
