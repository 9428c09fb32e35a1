"""Workflow runs on real Serve over HTTP and gRPC."""

from __future__ import annotations

import time
import uuid
from typing import Any

import httpx
import ray
from ray import serve

from serve_app.client.sdk import ServeflowClient
from tests.integration.conftest import wait_until

TERMINAL = ("succeeded", "failed", "cancelled")


def _run(http: httpx.Client, run_id: str) -> dict[str, Any]:
    return http.get(f"/v1/runs/{run_id}").json()["run"]


def _wait(http: httpx.Client, run_id: str, timeout: float = 60) -> dict[str, Any]:
    return wait_until(lambda: (r := _run(http, run_id))["status"] in TERMINAL and r, timeout, what=f"run {run_id}")


def _steps(run: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {s["name"]: s for s in run["steps"]}


def test_diamond_sync(http: httpx.Client) -> None:
    r = http.post("/v1/workflows/diamond/runs", json={"input": {"text": "hey", "n": 12}, "wait": True})
    assert r.status_code == 200, r.text
    run = r.json()["run"]
    assert run["status"] == "succeeded" and run["output"] == {"fib": 144, "echo": "hey"}
    s = _steps(run)
    assert s["d"]["started_at"] >= max(s["b"]["finished_at"], s["c"]["finished_at"])


def test_fanout_overlaps(http: httpx.Client) -> None:
    r = http.post("/v1/workflows/fanout/runs", json={"input": {"seconds": 1.0}})
    assert r.status_code == 202
    run = _wait(http, r.json()["run_id"])
    sleeps = [s for name, s in _steps(run).items() if name.startswith("s")]
    assert len(sleeps) == 8 and all(s["status"] == "succeeded" for s in sleeps)
    # All eight sleeping steps were in flight at the same moment.
    assert max(s["started_at"] for s in sleeps) < min(s["finished_at"] for s in sleeps)


def test_retry_then_success_and_exhausted(http: httpx.Client) -> None:
    ok = http.post("/v1/workflows/retrying/runs", json={"input": {"key": uuid.uuid4().hex, "fail_times": 2}, "wait": True})
    run = ok.json()["run"]
    assert run["status"] == "succeeded" and _steps(run)["flaky"]["attempts"] == 3
    bad = http.post("/v1/workflows/retrying/runs", json={"input": {"key": uuid.uuid4().hex, "fail_times": 9}, "wait": True})
    run = bad.json()["run"]
    assert run["status"] == "failed" and run["error"]["details"]["step"] == "flaky"
    assert _steps(run)["flaky"]["attempts"] == 3 and _steps(run)["after"]["status"] == "skipped"


def test_step_timeout(http: httpx.Client) -> None:
    run = http.post("/v1/workflows/timeout/runs", json={"wait": True}).json()["run"]
    assert run["status"] == "failed" and _steps(run)["slow"]["error"]["code"] == "timeout"


def test_cancel_mid_run(http: httpx.Client) -> None:
    run_id = http.post("/v1/workflows/long/runs", json={}).json()["run_id"]
    wait_until(lambda: _steps(_run(http, run_id))["first"]["status"] == "running", 30, what="first step running")
    r = http.post(f"/v1/runs/{run_id}/cancel")
    assert r.status_code == 200
    run = r.json()["run"]
    assert run["status"] == "cancelled"
    s = _steps(run)
    assert s["first"]["status"] == "cancelled" and s["second"]["status"] == "cancelled" and s["second"]["attempts"] == 0


def test_idempotent_resubmission(http: httpx.Client) -> None:
    body = {"input": {"text": "once", "n": 3}, "idempotency_key": f"key-{uuid.uuid4().hex}"}
    first = http.post("/v1/workflows/diamond/runs", json=body).json()
    second = http.post("/v1/workflows/diamond/runs", json=body).json()
    assert second["run_id"] == first["run_id"] and second["created"] is False
    run = _wait(http, first["run_id"])
    assert all(s["attempts"] == 1 for s in run["steps"])  # no duplicate work
    listed = http.get("/v1/runs", params={"workflow": "diamond", "limit": 1000}).json()["runs"]
    assert sum(1 for r in listed if r["run_id"] == first["run_id"]) == 1


def test_typed_input_is_checked_before_a_run_exists(serve_instance: dict[str, Any], http: httpx.Client) -> None:
    before = len(http.get("/v1/runs", params={"workflow": "diamond", "limit": 1000}).json()["runs"])
    r = http.post("/v1/workflows/diamond/runs", json={"input": {"text": "x", "n": "twelve"}})
    assert r.status_code == 422 and r.json()["error"]["code"] == "validation_error", r.text
    assert ["input", "n"] in [e["loc"] for e in r.json()["error"]["details"]["errors"]]
    missing = http.post("/v1/workflows/diamond/runs", json={"input": {"n": 3}}).json()
    assert missing["error"]["details"]["errors"][0]["loc"] == ["input", "text"]
    with ServeflowClient(serve_instance["grpc"], application="serveflow") as client:
        refused = client.start_run("diamond", {"text": "x", "n": 1000})
        assert refused.error is not None and refused.error.code == "validation_error" and "maximum" in refused.error.message
    assert len(http.get("/v1/runs", params={"workflow": "diamond", "limit": 1000}).json()["runs"]) == before  # none created
    schema = http.get("/v1/workflows/diamond").json()["input_schema"]
    assert schema["required"] == ["text", "n"]


def test_conditions_skip_branches_on_real_serve(serve_instance: dict[str, Any], http: httpx.Client) -> None:
    gold = http.post("/v1/workflows/branchy/runs", json={"input": {"tier": "gold", "amount": 500}, "wait": True}).json()["run"]
    assert gold["status"] == "succeeded" and {s["name"]: s["status"] for s in gold["steps"]} == {
        "check": "succeeded", "vip": "succeeded", "thanks": "succeeded", "big": "succeeded",
    }
    with ServeflowClient(serve_instance["grpc"], application="serveflow") as client:
        plain = client.start_run("branchy", {"tier": "silver", "amount": 1}, wait=True).run
    assert plain is not None and plain["status"] == "succeeded"
    assert {s["name"]: s["status"] for s in plain["steps"]} == {"check": "succeeded", "vip": "skipped", "thanks": "skipped", "big": "skipped"}
    missing = http.post("/v1/workflows/branchy/runs", json={"input": {"tier": "gold"}, "wait": True}).json()["run"]
    big = {s["name"]: s for s in missing["steps"]}["big"]
    assert missing["status"] == "failed" and big["error"]["code"] == "validation_error" and "'big' when:" in big["error"]["message"]


def test_runs_over_grpc(serve_instance: dict[str, Any], http: httpx.Client) -> None:
    with ServeflowClient(serve_instance["grpc"], application="serveflow") as client:
        started = client.start_run("diamond", {"text": "g", "n": 5}, wait=True)
        assert started.success and started.run is not None and started.run["output"] == {"fib": 5, "echo": "g"}
        got = client.get_run(started.run_id or "")
        assert got.run == started.run
        missing = client.get_run("does-not-exist")
        assert not missing.success and missing.error is not None and missing.error.code == "not_found"
        bad = client.start_run("no_such_workflow")
        assert bad.error is not None and bad.error.code == "not_found"
        listed = client.list_runs(workflow="diamond", limit=5)
        assert listed.success and listed.runs and len(listed.runs) <= 5
        long_run = client.start_run("long")
        cancelled = client.cancel_run(long_run.run_id or "")
        assert cancelled.run is not None and cancelled.run["status"] == "cancelled"


def _coordinator_actor() -> Any:
    names = [a for a in ray.util.list_named_actors(all_namespaces=True) if "serveflow#Coordinator" in a["name"]]
    assert len(names) == 1, names
    return ray.get_actor(names[0]["name"], namespace=names[0]["namespace"])


def test_run_resumes_after_coordinator_replica_is_killed(http: httpx.Client) -> None:
    run_id = http.post("/v1/workflows/resumable/runs", json={"input": {"seconds": 4}}).json()["run_id"]
    wait_until(lambda: _steps(_run(http, run_id))["two"]["status"] == "running", 30, what="step two running")
    ray.kill(_coordinator_actor(), no_restart=True)
    # Serve starts a new Coordinator; it claims the run once the dead owner's lease lapses.
    started = time.monotonic()
    run = wait_until(
        lambda: (r := _run(http, run_id))["status"] == "succeeded" and r, 120, interval_s=0.5, what="resumed run"
    )
    s = _steps(run)
    assert s["one"]["attempts"] == 1  # finished before the kill: not re-run
    assert s["two"]["attempts"] == 2  # in flight at the kill: run again
    assert s["three"]["result"] == {"message": "first"}
    assert time.monotonic() - started < 120


def test_invalid_workflow_fails_the_deploy_with_the_step_named(serve_instance: dict[str, Any]) -> None:
    from ray.serve.schema import ServeDeploySchema

    from tests.integration.conftest import APP_ARGS

    bad_args = {
        **APP_ARGS,
        "workflows": {
            "store": "memory",
            "definitions": [
                {
                    "name": "loop",
                    "steps": [
                        {"name": "x", "task_type": "echo", "depends_on": ["y"]},
                        {"name": "y", "task_type": "echo", "depends_on": ["x"]},
                    ],
                }
            ],
        },
    }
    # Deploy through the config path `serve deploy` uses, so the build runs on the cluster.
    client = serve.context._get_global_client()
    schema = ServeDeploySchema.model_validate(
        {"applications": [{"name": "badwf", "route_prefix": "/badwf", "import_path": "graphs.serveflow:build_app", "args": bad_args}]}
    )
    try:
        client.deploy_apps(schema)
        status = wait_until(
            lambda: (a := serve.status().applications.get("badwf")) is not None and a.status == "DEPLOY_FAILED" and a,
            90,
            what="badwf DEPLOY_FAILED",
        )
        assert "steps form a cycle: x -> y -> x" in status.message
    finally:
        serve.delete("badwf")
    assert serve.status().applications["serveflow"].status == "RUNNING"
