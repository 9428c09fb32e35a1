"""Coordinator kills in the middle of a map and of a child workflow, on real Serve.

Every element and child step records each execution in a file (the ``record``
handler), so the tests count what ran again: elements and steps that had
finished before the kill never run again; only what was in flight does.
"""

from __future__ import annotations

import collections
import time
import uuid
from typing import Any

import httpx
import pytest
import ray

from tests.integration.conftest import wait_until

pytestmark = pytest.mark.faults


def _run(http: httpx.Client, run_id: str) -> dict[str, Any]:
    return http.get(f"/v1/runs/{run_id}").json()["run"]


def _steps(run: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {s["name"]: s for s in run["steps"]}


def _kill_coordinator() -> None:
    names = [a for a in ray.util.list_named_actors(all_namespaces=True) if "serveflow#Coordinator" in a["name"]]
    assert len(names) == 1, names
    ray.kill(ray.get_actor(names[0]["name"], namespace=names[0]["namespace"]), no_restart=True)


def _executions(path: str, key: str) -> collections.Counter[str]:
    with open(path, encoding="utf-8") as f:
        return collections.Counter(line.strip() for line in f if line.startswith(key + "."))


def _finished(path: str, key: str) -> set[str]:
    return set(_executions(path, key))


def test_a_map_resumes_after_a_coordinator_kill_running_only_unfinished_elements(http: httpx.Client, tmp_path: Any) -> None:
    path, key = str(tmp_path / "bulk.log"), uuid.uuid4().hex[:12]
    n, max_parallel = 40, 4
    items = [{"id": f"e{i}", "seconds": 0.4} for i in range(n)]
    run_id = http.post("/v1/workflows/bulk/runs", json={"input": {"items": items, "path": path, "key": key}}).json()["run_id"]

    def progressed() -> bool:
        m = _steps(_run(http, run_id))["each"]["map"]
        return bool(m and m["done"] >= 12)

    wait_until(progressed, 60, interval_s=0.1, what="a third of the map done")
    done_before = _steps(_run(http, run_id))["each"]["map"]["done"]
    recorded = _finished(path, key)  # started (or finished) before the kill
    _kill_coordinator()
    killed_at = time.monotonic()
    run = wait_until(lambda: (r := _run(http, run_id))["status"] in ("succeeded", "failed") and r, 120, interval_s=0.5, what="resumed map")
    each = _steps(run)["each"]
    assert run["status"] == "succeeded", run["error"]
    assert each["result"] == [{"key": f"{key}.e{i}", "pid": each["result"][i]["pid"]} for i in range(n)]
    assert each["map"]["done"] == n and each["attempts"] == 2  # the step was started twice: before and after the kill
    runs = _executions(path, key)
    assert set(runs) == {f"{key}.e{i}" for i in range(n)}  # every element ran
    again = {k for k, v in runs.items() if v > 1}
    # Only elements in flight at the kill ran again: at most the map's parallelism, plus any that
    # finished after the progress read but before the kill (still bounded by what had started).
    assert again <= recorded and len(again) <= max_parallel + (len(recorded) - done_before)
    assert done_before - len(again) >= 0
    print(f"map resume: {done_before}/{n} done at the kill, re-run {len(again)}, finished {time.monotonic() - killed_at:.1f}s after")


def test_a_child_workflow_resumes_after_a_coordinator_kill_and_is_not_started_twice(http: httpx.Client, tmp_path: Any) -> None:
    path, key = str(tmp_path / "child.log"), uuid.uuid4().hex[:12]
    run_id = http.post("/v1/workflows/parent/runs", json={"input": {"path": path, "key": key, "seconds": 3}}).json()["run_id"]
    wait_until(lambda: f"{key}.second" in _finished(path, key), 60, interval_s=0.1, what="the child's second step running")
    child_id = _steps(_run(http, run_id))["child"]["child_run_id"]
    assert child_id and _run(http, child_id)["parent_run_id"] == run_id
    _kill_coordinator()
    run = wait_until(lambda: (r := _run(http, run_id))["status"] in ("succeeded", "failed") and r, 120, interval_s=0.5, what="resumed parent")
    assert run["status"] == "succeeded", run["error"]
    assert _steps(run)["after"]["result"] == {"message": f"{key}.second"}
    children = http.get("/v1/runs", params={"parent_run_id": run_id}).json()["runs"]
    assert [c["run_id"] for c in children] == [child_id]  # the resumed parent found its child
    child = _run(http, child_id)
    assert child["status"] == "succeeded" and _steps(child)["first"]["attempts"] == 1
    runs = _executions(path, key)
    assert runs[f"{key}.first"] == 1 and runs[f"{key}.second"] == 2  # finished: once; in flight: once more


def test_cancelling_a_parent_cancels_its_child_on_real_serve(http: httpx.Client, tmp_path: Any) -> None:
    path, key = str(tmp_path / "cancel.log"), uuid.uuid4().hex[:12]
    run_id = http.post("/v1/workflows/parent/runs", json={"input": {"path": path, "key": key, "seconds": 30}}).json()["run_id"]
    wait_until(lambda: f"{key}.second" in _finished(path, key), 60, interval_s=0.1, what="the child running")
    child_id = _steps(_run(http, run_id))["child"]["child_run_id"]
    assert http.post(f"/v1/runs/{run_id}/cancel").json()["run"]["status"] == "cancelled"
    child = wait_until(lambda: (c := _run(http, child_id))["status"] in ("cancelled", "succeeded", "failed") and c, 30, what="child ended")
    assert child["status"] == "cancelled" and _steps(child)["second"]["status"] == "cancelled"
