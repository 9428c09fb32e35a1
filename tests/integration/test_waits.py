"""Durable sleep and signals on real Serve: over HTTP and gRPC, and across Coordinator kills."""

from __future__ import annotations

import time
import uuid
from typing import Any

import httpx
import pytest
import ray

from serve_app.client.sdk import RetryPolicy, ServeflowClient
from tests.integration.conftest import wait_until


def _run(http: httpx.Client, run_id: str) -> dict[str, Any]:
    return http.get(f"/v1/runs/{run_id}").json()["run"]


def _step(http: httpx.Client, run_id: str, name: str) -> dict[str, Any]:
    return {s["name"]: s for s in _run(http, run_id)["steps"]}[name]


def _finished(http: httpx.Client, run_id: str, timeout: float = 60) -> dict[str, Any]:
    return wait_until(lambda: (r := _run(http, run_id))["status"] in ("succeeded", "failed", "cancelled") and r, timeout, interval_s=0.2, what="run end")


def _kill_coordinator() -> None:
    (actor,) = [a for a in ray.util.list_named_actors(all_namespaces=True) if "serveflow#Coordinator" in a["name"]]
    ray.kill(ray.get_actor(actor["name"], namespace=actor["namespace"]), no_restart=True)


def test_signals_over_http_and_grpc(serve_instance: dict[str, Any], http: httpx.Client) -> None:
    early = http.post("/v1/workflows/approval/runs", json={"input": {"what": "early"}}).json()["run_id"]
    sent = http.post(f"/v1/runs/{early}/signals/approved", json={"payload": {"by": "ada"}, "signal_id": "e1"})
    assert sent.status_code == 200 and sent.json()["created"] is True
    assert _finished(http, early)["output"]["after"] == {"message": "ada"}  # kept until the step took it
    run_id = http.post("/v1/workflows/approval/runs", json={"input": {"what": "grpc"}}).json()["run_id"]
    wait_until(lambda: _step(http, run_id, "approve")["status"] == "running", 30, what="waiting for the signal")
    with ServeflowClient(serve_instance["grpc"], application="serveflow") as client:
        first = client.send_signal(run_id, "approved", {"by": "grace"}, signal_id="g1")
        dup = client.send_signal(run_id, "approved", {"by": "mallory"}, signal_id="g1")
        assert first.success and first.created is True and dup.success and dup.created is False
        unknown = client.send_signal(run_id, "rejected", {})
        assert unknown.error is not None and unknown.error.code == "not_found"
        run = _finished(http, run_id)
        assert run["status"] == "succeeded" and _step(http, run_id, "after")["result"] == {"message": "grace"}
        late = client.send_signal(run_id, "approved", {"by": "late"})
        assert late.error is not None and late.error.code == "conflict"


@pytest.mark.faults
def test_a_sleep_wakes_on_time_after_a_coordinator_kill(http: httpx.Client) -> None:
    run_id = http.post("/v1/workflows/nap/runs", json={"input": {"seconds": 8}}).json()["run_id"]
    nap = wait_until(lambda: (s := _step(http, run_id, "nap"))["wake_at"] and s, 30, what="the run sleeping")
    _kill_coordinator()  # nothing of the run is in it: the next Coordinator wakes it when due
    run = _finished(http, run_id, 120)
    woke = {s["name"]: s for s in run["steps"]}["nap"]["result"]["woke_at"]
    assert run["status"] == "succeeded" and woke >= nap["wake_at"]
    print(f"sleep across a Coordinator kill: due {nap['wake_at']:.2f}, woke {woke - nap['wake_at']:.2f}s after")
    assert woke - nap["wake_at"] < 10  # on time: within the new Coordinator's start and one lease tick


@pytest.mark.faults
def test_a_signal_wait_survives_a_coordinator_kill(serve_instance: dict[str, Any], http: httpx.Client) -> None:
    run_id = http.post("/v1/workflows/approval/runs", json={"input": {"what": "kill"}}).json()["run_id"]
    wait_until(lambda: _step(http, run_id, "approve")["status"] == "running", 30, what="waiting for the signal")
    _kill_coordinator()
    policy = RetryPolicy(max_attempts=200, initial_backoff_s=0.2, max_backoff_s=1.0)
    with ServeflowClient(serve_instance["grpc"], application="serveflow", retry=policy) as client:
        signal_id = uuid.uuid4().hex
        deadline = time.monotonic() + 90
        while True:  # the client sends again, with the same id, until a Coordinator answers
            sent = client.send_signal(run_id, "approved", {"by": "after-kill"}, signal_id=signal_id)
            if sent.success or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        assert sent.success, sent.error
    run = _finished(http, run_id, 90)
    assert run["status"] == "succeeded" and run["output"]["after"] == {"message": "after-kill"}
