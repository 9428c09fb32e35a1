"""The whole Serve instance goes down and comes back from serve_config.yaml.

Runs last on purpose (file name): it restarts the session's Serve instance and
redeploys the app through the declarative config path, as `serve deploy` does.
"""

from __future__ import annotations

import concurrent.futures as cf
import pathlib
import time
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


def test_accepted_runs_resume_and_clients_reconnect_after_full_restart(serve_instance: dict[str, Any], http: httpx.Client) -> None:
    policy = RetryPolicy(max_attempts=400, initial_backoff_s=0.1, max_backoff_s=0.5)
    client = ServeflowClient(serve_instance["grpc"], application="serveflow", retry=policy, default_deadline_s=30)
    assert client.submit("echo", {"message": "before"}).success

    run_ids = [
        http.post("/v1/workflows/resumable/runs", json={"input": {"seconds": 3}}).json()["run_id"] for _ in range(3)
    ]
    wait_until(
        lambda: all(
            {s["name"]: s for s in http.get(f"/v1/runs/{r}").json()["run"]["steps"]}["two"]["status"] == "running"
            for r in run_ids
        ),
        30,
        what="runs in flight",
    )

    serve.shutdown()  # controller, proxies, every replica
    # With Serve's direct ingress (the haproxy profile) shutdown returns while the controller is
    # still draining; a start before it is gone attaches to it and dies with it.
    wait_until(_controller_gone, 60, what="the old Serve controller to exit")
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


def _controller_gone() -> bool:
    try:
        ray.get_actor("SERVE_CONTROLLER_ACTOR", namespace="serve")
    except ValueError:
        return True
    return False
