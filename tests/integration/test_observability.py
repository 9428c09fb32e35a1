"""Traces across processes, metrics, status and the CLI against real Serve."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from typing import Any

import httpx

from tests.integration.conftest import wait_until


def _spans(path: str, trace_id: str) -> list[dict[str, Any]]:
    if not os.path.exists(path):
        return []
    with open(path, encoding="utf-8") as f:
        return [s for s in (json.loads(line) for line in f if line.strip()) if s["trace_id"] == trace_id]


def test_one_trace_spans_ingress_coordinator_and_worker(serve_instance: dict[str, Any], http: httpx.Client) -> None:
    trace_id = uuid.uuid4().hex
    parent = "00f067aa0ba902b7"
    r = http.post(
        "/v1/tasks",
        json={"task_type": "fib", "payload": {"n": 9}},
        headers={"traceparent": f"00-{trace_id}-{parent}-01"},
    )
    assert r.json()["trace_id"] == trace_id
    names = {"HTTP POST /v1/tasks", "Task:fib", "Handler:fib"}
    spans = wait_until(
        lambda: (found := _spans(serve_instance["spans_path"], trace_id)) and names <= {s["name"] for s in found} and found,
        30,
        what="spans from the coordinator and the worker",
    )
    by_name = {s["name"]: s for s in spans}
    assert by_name["HTTP POST /v1/tasks"]["parent_id"] == parent
    assert by_name["Task:fib"]["parent_id"] == by_name["HTTP POST /v1/tasks"]["span_id"]
    assert by_name["Handler:fib"]["parent_id"] == by_name["Task:fib"]["span_id"]
    assert by_name["Handler:fib"]["attributes"]["serveflow.pool"] == "compute"  # recorded in the worker process


def test_status_shows_tasks_and_resources(http: httpx.Client) -> None:
    http.post("/v1/tasks", json={"task_type": "echo", "payload": {"message": "count me"}})
    doc = http.get("/v1/status").json()
    assert doc["tasks"]["outcomes"]["echo"]["success"] >= 1
    assert doc["resources"]["source"] == "local" and doc["resources"]["local"]["cpu_count"] >= 1
    pool = doc["pools"]["general"]
    assert pool["since"] and doc["deployments"]["HandlerWorker_general"]["replica_states"]["RUNNING"] >= 1


def test_prometheus_metrics(serve_instance: dict[str, Any], http: httpx.Client) -> None:
    http.post("/v1/tasks", json={"task_type": "echo", "payload": {"message": "metric"}})

    def scraped() -> str | None:
        text = httpx.get(serve_instance["metrics"], timeout=5).text
        return text if "serveflow_tasks_total" in text else None

    text = wait_until(scraped, 60, interval_s=2, what="serveflow metrics on Ray's Prometheus endpoint")
    assert 'task_type="echo"' in text and 'outcome="success"' in text
    assert "serveflow_task_latency_ms_bucket" in text

    def lag_exported() -> str | None:
        text = httpx.get(serve_instance["metrics"], timeout=5).text
        return text if 'serveflow_subscription_lag{' in text and 'subscription="orders"' in text else None

    wait_until(lag_exported, 60, interval_s=2, what="the subscription lag gauge")


def _cli(url: str, *argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "serve_app.client.cli", "--url", url, *argv], capture_output=True, text=True, timeout=120
    )


def test_cli_against_the_running_app(serve_instance: dict[str, Any], http: httpx.Client) -> None:
    url = serve_instance["http"]
    status = _cli(url, "status")
    # The test cluster has no dashboard, so the MetricsCollector runs on its fallback: degraded, exit 1.
    assert status.returncode == 1, status.stdout + status.stderr
    assert status.stdout.startswith(f"serveflow at {url}: degraded")
    assert "HandlerWorker" not in status.stdout.splitlines()[0]
    assert any(line.startswith("general") and "healthy" in line for line in status.stdout.splitlines())
    submitted = _cli(url, "submit", "fib", "--payload", '{"n": 11}')
    assert submitted.returncode == 0 and json.loads(submitted.stdout)["result"]["value"] == 89
    run = _cli(url, "run-workflow", "diamond", "--input", '{"text": "cli", "n": 6}', "--wait")
    assert run.returncode == 0 and json.loads(run.stdout)["run"]["output"] == {"fib": 8, "echo": "cli"}
