"""The whole Serve instance goes down and comes back from serve_config.yaml.

Runs last on purpose (file name): it restarts the session's Serve instance and
redeploys the app through the declarative config path, as `serve deploy` does.
"""

from __future__ import annotations

import collections
import concurrent.futures as cf
import pathlib
import time
import uuid
from typing import Any

import httpx
import pytest
import yaml
import ray
from ray import serve
from ray.serve.schema import ServeDeploySchema

from serve_app.client.sdk import RetryPolicy, ServeflowClient
from tests.integration.conftest import wait_until

pytestmark = pytest.mark.faults

ROOT = pathlib.Path(__file__).parents[2]


def _deploy_from_serve_config(args: dict[str, Any]) -> None:
    doc = yaml.safe_load((ROOT / "serve_config.yaml").read_text())
    (app,) = doc["applications"]
    app["args"] = args  # the test's pools, store and tracing; everything else as shipped
    serve.context._get_global_client().deploy_apps(ServeDeploySchema.model_validate({"applications": [app]}))


def test_accepted_runs_resume_and_clients_reconnect_after_full_restart(
    serve_instance: dict[str, Any], http: httpx.Client, tmp_path: pathlib.Path
) -> None:
    policy = RetryPolicy(max_attempts=400, initial_backoff_s=0.1, max_backoff_s=0.5)
    client = ServeflowClient(serve_instance["grpc"], application="serveflow", retry=policy, default_deadline_s=30)
    assert client.submit("echo", {"message": "before"}).success

    run_ids = [
        http.post("/v1/workflows/resumable/runs", json={"input": {"seconds": 8}}).json()["run_id"] for _ in range(3)
    ]
    # A map part-way through, a run asleep and a run waiting for a signal go down with everything.
    path, key, n = str(tmp_path / "bulk.log"), uuid.uuid4().hex[:12], 100
    items = [{"id": f"e{i}", "seconds": 0.4} for i in range(n)]
    bulk = http.post("/v1/workflows/bulk/runs", json={"input": {"items": items, "path": path, "key": key}}).json()["run_id"]
    nap = http.post("/v1/workflows/nap/runs", json={"input": {"seconds": 20}}).json()["run_id"]
    approval = http.post("/v1/workflows/approval/runs", json={"input": {"what": "restart"}}).json()["run_id"]
    wait_until(
        lambda: all(_steps(http, r)["two"]["status"] == "running" for r in run_ids)
        and (_steps(http, bulk)["each"]["map"] or {}).get("done", 0) >= 8
        and _steps(http, nap)["nap"]["wake_at"]
        and _steps(http, approval)["approve"]["status"] == "running",
        30,
        interval_s=0.1,
        what="runs in flight, a map part-way, a sleep and a signal wait",
    )
    wake_at = _steps(http, nap)["nap"]["wake_at"]
    done_before = _steps(http, bulk)["each"]["map"]["done"]

    serve.shutdown()  # controller, proxies, every replica
    # With Serve's direct ingress (the haproxy profile) shutdown returns while the controller is
    # still draining; a start before it is gone attaches to it and dies with it.
    wait_until(_controller_gone, 60, what="the old Serve controller to exit")
    started_before = _started(path, key)  # every element that began before the restart
    with cf.ThreadPoolExecutor(1) as pool:
        # The same client object keeps trying while nothing is listening.
        during = pool.submit(client.submit, "echo", {"message": "across the restart"})
        time.sleep(2)
        serve.start(http_options=serve_instance["http_options"], grpc_options=serve_instance["grpc_options"])
        _deploy_from_serve_config(serve_instance["args"])
        result = during.result(timeout=180)
    assert result.success and result.result == {"message": "across the restart"}
    assert client.submit("echo", {"message": "after"}).success
    client.close()

    with httpx.Client(base_url=serve_instance["http"], timeout=30) as fresh:
        wait_until(lambda: fresh.get("/readyz").status_code == 200, 120, what="app ready again")
        for run_id in run_ids:
            run = wait_until(
                lambda run_id=run_id: (r := fresh.get(f"/v1/runs/{run_id}").json()["run"])["status"] == "succeeded" and r,
                90,
                what=f"run {run_id} resumed",
            )
            steps = {s["name"]: s for s in run["steps"]}
            assert steps["one"]["attempts"] == 1  # done before the restart: not re-run
            assert steps["two"]["attempts"] == 2  # in flight at the restart: run again

        def ended(run_id: str) -> Any:
            return wait_until(
                lambda: (r := fresh.get(f"/v1/runs/{run_id}").json()["run"])["status"] in ("succeeded", "failed") and r,
                90,
                what=f"run {run_id} ended",
            )

        # The map: every element once in order; only elements started before the restart ran twice.
        run = ended(bulk)
        each = {s["name"]: s for s in run["steps"]}["each"]
        assert run["status"] == "succeeded", run["error"]
        assert [r["key"] for r in each["result"]] == [f"{key}.e{i}" for i in range(n)] and each["map"]["done"] == n
        executions = _executions(path, key)
        again = {k for k, v in executions.items() if v > 1}
        assert set(executions) == {f"{key}.e{i}" for i in range(n)} and again <= started_before
        # The restart came mid-map; the elements on record as done before it never ran again.
        assert len(started_before) < n and len(started_before) - len(again) >= done_before
        # The sleep wakes when due (or at once if it fell due during the restart), never before.
        run = ended(nap)
        woke = {s["name"]: s for s in run["steps"]}["nap"]["result"]["woke_at"]
        assert run["status"] == "succeeded" and woke >= wake_at
        # The signal wait is still waiting, and the signal sent after the restart ends it.
        assert fresh.post(f"/v1/runs/{approval}/signals/approved", json={"payload": {"by": "after-restart"}}).status_code == 200
        run = ended(approval)
        assert run["status"] == "succeeded" and run["output"]["after"] == {"message": "after-restart"}


def _steps(http: httpx.Client, run_id: str) -> dict[str, Any]:
    return {s["name"]: s for s in http.get(f"/v1/runs/{run_id}").json()["run"]["steps"]}


def _executions(path: str, key: str) -> collections.Counter[str]:
    try:
        with open(path, encoding="utf-8") as f:
            return collections.Counter(line.strip() for line in f if line.startswith(key + "."))
    except FileNotFoundError:
        return collections.Counter()


def _started(path: str, key: str) -> set[str]:
    return set(_executions(path, key))


def _controller_gone() -> bool:
    try:
        ray.get_actor("SERVE_CONTROLLER_ACTOR", namespace="serve")
    except ValueError:
        return True
    return False
