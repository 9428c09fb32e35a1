"""Map steps, child workflows and concurrency keys on real Serve, over HTTP and gRPC."""

from __future__ import annotations

import uuid
from typing import Any

import httpx

from serve_app.client.sdk import ServeflowClient
from tests.integration.conftest import wait_until

TERMINAL = ("succeeded", "failed", "cancelled")


def _run(http: httpx.Client, run_id: str) -> dict[str, Any]:
    return http.get(f"/v1/runs/{run_id}").json()["run"]


def _steps(run: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {s["name"]: s for s in run["steps"]}


def test_map_over_child_workflows_over_http_and_grpc(serve_instance: dict[str, Any], http: httpx.Client) -> None:
    regions = ["eu-west", "us-east", "ap-south", "sa-east", "af-south"]
    r = http.post("/v1/workflows/regions/runs", json={"input": {"regions": regions, "label": "all"}, "wait": True})
    assert r.status_code == 200, r.text
    run = r.json()["run"]
    assert run["status"] == "succeeded", run["error"]
    assert run["output"] == {"regions": [{"region": x} for x in regions], "label": "all"}
    per_region = _steps(run)["per_region"]
    assert per_region["task_type"] == "workflow:region"
    assert per_region["map"] == {"total": 5, "succeeded": 5, "failed": 0, "failed_items": [], "done": 5}
    children = http.get("/v1/runs", params={"parent_run_id": run["run_id"]}).json()["runs"]
    assert len(children) == 5 and all(c["workflow"] == "region" and c["parent_step"] == "per_region" for c in children)
    assert sorted(c["output"]["region"] for c in children) == sorted(regions)
    with ServeflowClient(serve_instance["grpc"], application="serveflow") as client:
        started = client.start_run("regions", {"regions": ["x"], "label": "grpc"}, wait=True)
        assert started.run is not None and started.run["output"] == {"regions": [{"region": "x"}], "label": "grpc"}
        listed = client.list_runs(parent_run_id=started.run_id or "")
        assert listed.success and listed.runs is not None and [c["input"] for c in listed.runs] == [{"region": "x"}]


def test_map_continue_reports_failed_elements(http: httpx.Client) -> None:
    rows = [{"n": 10}, {"n": "ten"}, {"n": 3}, {}]
    run = http.post("/v1/workflows/scores/runs", json={"input": {"rows": rows, "label": "r"}, "wait": True}).json()["run"]
    assert run["status"] == "succeeded", run["error"]
    score = _steps(run)["score"]
    assert score["result"] == [{"n": 10, "value": 55}, None, {"n": 3, "value": 2}, None]
    assert score["map"]["failed"] == 2 and [f["index"] for f in score["map"]["failed_items"]] == [1, 3]
    assert all(f["error"]["code"] == "validation_error" for f in score["map"]["failed_items"])


def test_bad_dynamic_input_is_a_structured_failure_never_a_500(serve_instance: dict[str, Any], http: httpx.Client) -> None:
    # A map over something that is not a list: the step fails, named; the run ends.
    run = http.post("/v1/workflows/scores/runs", json={"input": {"rows": {"n": 1}, "label": "x"}, "wait": True}).json()["run"]
    err = _steps(run)["score"]["error"]
    assert run["status"] == "failed" and err["code"] == "validation_error" and "step 'score' map:" in err["message"]
    # A child whose input does not match its schema: the parent step fails with the child's 422 reason.
    bad_child = http.post("/v1/workflows/regions/runs", json={"input": {"regions": [7], "label": "x"}, "wait": True}).json()["run"]
    child_err = _steps(bad_child)["per_region"]["error"]
    assert bad_child["status"] == "failed" and child_err["code"] == "validation_error" and "element 0" in child_err["message"]
    # A concurrency key the input lacks: 422 naming it, and no run is created.
    before = len(http.get("/v1/runs", params={"workflow": "billing", "limit": 1000}).json()["runs"])
    r = http.post("/v1/workflows/billing/runs", json={"input": {"seconds": 0.1}})
    assert r.status_code == 422 and "concurrency key ${input.customer}" in r.json()["error"]["message"]
    assert r.json()["error"]["details"]["errors"][0]["loc"] == ["input", "customer"]
    with ServeflowClient(serve_instance["grpc"], application="serveflow") as client:
        refused = client.start_run("billing", {"seconds": 0.1})
        assert refused.error is not None and refused.error.code == "validation_error"
        bad_priority = client.start_run("billing", {"customer": "c", "seconds": 0.1}, priority=9)
        assert bad_priority.error is not None and bad_priority.error.code == "validation_error"
    assert len(http.get("/v1/runs", params={"workflow": "billing", "limit": 1000}).json()["runs"]) == before
    assert http.get("/v1/runs", params={"status": "queued"}).status_code == 200


def test_concurrency_key_queues_runs_with_positions_and_priority(http: httpx.Client) -> None:
    customer = uuid.uuid4().hex

    def start(seconds: float, **kw: Any) -> dict[str, Any]:
        r = http.post("/v1/workflows/billing/runs", json={"input": {"customer": customer, "seconds": seconds}, **kw})
        assert r.status_code == 202, r.text
        return r.json()["run"]

    first = start(1.5)
    low = start(0.05)
    high = start(0.05, priority=3)
    other = http.post("/v1/workflows/billing/runs", json={"input": {"customer": "other-" + customer, "seconds": 0.05}, "wait": True})
    assert other.json()["run"]["status"] == "succeeded"  # a different key is not held up
    assert first["status"] in ("pending", "running") and first["queue_position"] is None
    assert _run(http, high["run_id"])["queue_position"] == 1 and _run(http, low["run_id"])["queue_position"] == 2
    queued = http.get("/v1/runs", params={"status": "queued", "workflow": "billing"}).json()["runs"]
    assert {r["run_id"] for r in queued} >= {low["run_id"], high["run_id"]}
    done = {
        r["run_id"]: wait_until(lambda r=r: (x := _run(http, r["run_id"]))["status"] in TERMINAL and x, 60, what="billing run")
        for r in (first, low, high)
    }
    assert all(r["status"] == "succeeded" for r in done.values())
    a, hi, lo = done[first["run_id"]], done[high["run_id"]], done[low["run_id"]]
    assert a["finished_at"] <= hi["started_at"] and hi["finished_at"] <= lo["started_at"]  # one at a time, by priority


def test_status_shows_the_coordinators_step_slots(http: httpx.Client) -> None:
    coordinator = http.get("/v1/status").json()["components"]["Coordinator"]
    slots = coordinator["details"]["step_slots"]
    assert slots["capacity"] == 256 and 0 <= slots["in_use"] <= 256 and slots["waiting"] >= 0
