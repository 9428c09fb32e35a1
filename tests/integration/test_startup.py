"""Startup order without races, and a pool whose handlers cannot load."""

from __future__ import annotations

import time
from typing import Any

import httpx
from ray import serve

from graphs.serveflow import build_app
from tests.integration.conftest import wait_until

LATE_ARGS: dict[str, Any] = {
    "pools": {
        "model": {
            "handler_modules": ["serve_app.examples.model"],
            "task_types": ["tokenize"],
            "settings": {"load_seconds": 10, "vocabulary": ["a", "b"]},
        },
        "broken": {"handler_modules": ["serve_app.examples.no_such_module"], "task_types": ["ghost"]},
    },
    "probe_interval_s": 0.5,
}


def _json(r: httpx.Response) -> dict[str, Any] | None:
    try:
        body = r.json()
    except ValueError:
        return None  # Serve's own answer before our Coordinator exists
    return body if isinstance(body, dict) else None


def test_not_ready_until_pools_load_then_serves(serve_instance: dict[str, Any]) -> None:
    serve._run(build_app(LATE_ARGS), name="late", route_prefix="/late", _blocking=False)
    try:
        with httpx.Client(base_url=serve_instance["http"] + "/late", timeout=15) as http:
            seen: list[str] = []

            def tokenized() -> bool:
                r = http.post("/v1/tasks", json={"task_type": "tokenize", "payload": {"text": "a b c"}})
                body = _json(r)
                if body is not None and "error" in body:
                    if body["error"] is None:
                        assert r.status_code == 200
                        return True
                    assert r.status_code == 503 and body["error"]["code"] == "not_ready", r.text
                    assert body["error"]["retryable"] is True and r.headers["retry-after"] == "1"
                    seen.append(body["error"]["code"])
                return False

            started = time.monotonic()
            wait_until(tokenized, 120, interval_s=0.3, what="model pool to finish loading")
            assert seen, "the Coordinator never answered not_ready while the pool was loading"
            assert time.monotonic() - started >= 5
            r = http.post("/v1/tasks", json={"task_type": "tokenize", "payload": {"text": "b a z"}})
            assert r.json()["result"] == {"ids": [1, 0, -1]}

            # The broken pool: requests get not_ready with the reason; status names the import error.
            r = http.post("/v1/tasks", json={"task_type": "ghost"})
            assert r.status_code == 503 and r.json()["error"]["code"] == "not_ready"

            def import_error_reported() -> bool:
                pool = http.get("/v1/status").json()["pools"]["broken"]
                return pool["status"] != "healthy" and "failed to import" in str(pool)

            wait_until(import_error_reported, 60, what="status to report the import error")
            ready = http.get("/readyz")
            assert ready.status_code == 503 and "broken" in ready.json()["error"]["details"]["pools"]
            assert http.get("/v1/status").json()["status"] in ("degraded", "unhealthy")
    finally:
        serve.delete("late")
