"""Results kept by reference on real Serve: a step's bytes stay in the worker that made them
(or in Ray's object store) and reach the next step without the Coordinator or the database
holding them; a result lost with its worker is made again."""

from __future__ import annotations

import zlib
from typing import Any

import httpx
import pytest
import ray
from ray import serve

from graphs.serveflow import build_app
from serve_app.client.sdk import ServeflowClient
from tests.integration.conftest import wait_until
from tests.integration.faults import pool_settled, replica_actors

MB = 1 << 20


def _stats(size: int) -> dict[str, int]:
    return {"bytes": size, "adler32": zlib.adler32(bytes(size))}


def _marker(size: int) -> dict[str, Any]:
    return {"$serveflow_ref": {"bytes": size, "kind": "bytes", "step": "make"}}


def _ended(http: httpx.Client, run_id: str, timeout_s: float) -> dict[str, Any]:
    """The run, once it has succeeded or failed."""
    return wait_until(
        lambda: (r := http.get(f"/v1/runs/{run_id}").json()["run"])["status"] in ("succeeded", "failed") and r,
        timeout_s,
        interval_s=0.2,
        what="the run to end",
    )


def test_a_large_result_goes_by_reference_over_http_and_grpc(serve_instance: dict[str, Any], http: httpx.Client) -> None:
    size = 20 * MB
    body = http.post("/v1/workflows/big_result/runs", json={"input": {"size": size, "pause": 0}, "wait": True}).json()
    assert body["success"], body["error"]
    steps = {s["name"]: s for s in body["run"]["steps"]}
    assert steps["make"]["result"] == _marker(size)  # what the store and every reader see
    assert steps["stats"]["result"] == _stats(size)
    assert body["run"]["output"] == {"stats": _stats(size)}
    stored = http.get(f"/v1/runs/{body['run_id']}")
    assert stored.status_code == 200 and len(stored.content) < 10_000  # 20 MB never reached the store
    listed = http.get("/v1/runs", params={"workflow": "big_result"})
    assert listed.status_code == 200 and len(listed.content) < 100_000
    # The reader runs on the compute pool's one replica, which made the bytes: it took them from
    # its own memory, not out of the object store (reported by the worker's status probe).
    wait_until(
        lambda: http.get("/v1/status").json()["pools"]["compute"]["details"]["reported"]["details"]["reused_results"] >= 1,
        30,
        what="the compute worker to report a reused result",
    )
    with ServeflowClient(serve_instance["grpc"], application="serveflow") as client:
        run = client.start_run("big_result", {"size": 3 * MB, "pause": 0}, wait=True)
        assert run.success and run.run is not None
        assert {s["name"]: s for s in run.run["steps"]}["stats"]["result"]["bytes"] == 3 * MB


def test_between_a_maker_and_its_one_reader_the_bytes_wait_in_the_makers_worker(http: httpx.Client) -> None:
    """``make``'s one reader is in its pool: the bytes stay in the worker that made them (no copy
    in the object store) until the reader, sent to that replica, takes them."""
    worker = serve.get_deployment_handle("HandlerWorker_compute", "serveflow")  # one replica

    def held() -> int:
        return worker.get_status.remote().result()["details"]["held_alone_bytes"]

    size = 7 * MB
    run_id = http.post("/v1/workflows/big_result/runs", json={"input": {"size": size, "pause": 2}}).json()["run_id"]
    wait_until(lambda: held() == size, 30, interval_s=0.05, what="the worker to hold the bytes")
    run = _ended(http, run_id, 60)
    assert run["status"] == "succeeded", run["error"]
    assert {s["name"]: s for s in run["steps"]}["stats"]["result"] == _stats(size)
    assert held() == 0  # taken by the reader


def test_a_task_answer_over_4_mib_gets_through_over_http_and_grpc(serve_instance: dict[str, Any], http: httpx.Client) -> None:
    """An inline answer larger than gRPC's default message limit: between the worker and the
    Coordinator (Serve's gRPC transport in this profile) and back to a gRPC client."""
    size = 6 * MB
    body = http.post("/v1/tasks", json={"task_type": "make_blob", "payload": {"size": size, "text": True}}).json()
    assert body["success"], body["error"]
    assert body["result"] == "x" * size
    with ServeflowClient(serve_instance["grpc"], application="serveflow") as client:
        result = client.submit("make_blob", {"size": size, "text": True})
    assert result.success, result.error
    assert result.result == "x" * size
    # Inline both ways: the result to the Coordinator, then the next step's input to its worker.
    run = http.post("/v1/workflows/big_inline/runs", json={"input": {"size": size}, "wait": True}).json()["run"]
    assert run["status"] == "succeeded", run["error"]
    assert run["output"] == {"bytes": size, "adler32": zlib.adler32(b"x" * size)}


AFFINITY_ARGS: dict[str, Any] = {
    "pools": {
        "blobs": {
            "handler_modules": ["serve_app.examples.compute"],
            "task_types": ["make_blob", "blob_stats"],
            "num_replicas": 2,
            "reuse_results_bytes": 3 * MB,
        },
    },
    "workflows": {
        "store": "memory",
        "definitions": [
            {
                "name": "pair",
                "steps": [
                    {"name": "make", "task_type": "make_blob", "input": {"size": "${input.size}"}},
                    {"name": "stats", "task_type": "blob_stats", "input": {"data": "${steps.make.result}"}},
                ],
            }
        ],
    },
}


def test_with_two_replicas_each_reader_goes_to_the_replica_that_made_its_bytes(serve_instance: dict[str, Any]) -> None:
    """The pool's router sends each reader to the replica that made its bytes (the maker held them
    there alone and answered with that replica's id), so every reader takes them from its maker's
    memory; makers spread over both replicas. Routed as Serve routes, about half the readers
    would land on the other replica."""
    serve.run(build_app(AFFINITY_ARGS), name="affinity", route_prefix="/affinity")
    try:
        with httpx.Client(base_url=serve_instance["http"] + "/affinity", timeout=60) as http:
            wait_until(lambda: http.get("/readyz").status_code == 200, 60, what="the affinity app")
            runs = 16
            for _ in range(runs):
                body = http.post("/v1/workflows/pair/runs", json={"input": {"size": 2 * MB}, "wait": True}).json()
                assert body["success"], body["error"]
                assert {s["name"]: s for s in body["run"]["steps"]}["stats"]["result"] == _stats(2 * MB)
            # Larger than the room to hold it: in the object store, its reference held by the maker's
            # replica (the calls still carry no ObjectRef), where the reader reads it.
            for _ in range(4):
                body = http.post("/v1/workflows/pair/runs", json={"input": {"size": 4 * MB}, "wait": True}).json()
                assert body["success"], body["error"]
                assert {s["name"]: s for s in body["run"]["steps"]}["stats"]["result"] == _stats(4 * MB)
        handle = serve.get_deployment_handle("HandlerWorker_blobs", "affinity")
        replicas: dict[str, dict[str, Any]] = {}

        def both_reported() -> bool:
            details = handle.get_status.remote().result()["details"]  # no key: either replica answers
            replicas[details["replica_id"]] = details
            return len(replicas) == 2

        wait_until(both_reported, 30, interval_s=0.05, what="both replicas' status")
        assert sum(d["reused_results"] for d in replicas.values()) == runs, replicas
        assert all(d["completed"] >= 2 for d in replicas.values()), replicas  # each made and read some runs
    finally:
        serve.delete("affinity")


def test_a_reader_waits_for_the_busy_replica_that_holds_its_bytes_rather_than_go_elsewhere(
    serve_instance: dict[str, Any],
) -> None:
    """Each replica takes one call at a time. While the reader's turn comes, the replica holding
    its bytes is busy with another call and the other one is free: the reader waits for its
    replica and takes the bytes there. (Sent to the free one, it would find nothing and the maker
    would run again.)"""
    args = {
        "pools": {
            "general": {"handler_modules": ["serve_app.examples.basic"], "task_types": ["sleep"]},
            "blobs": {
                "handler_modules": ["serve_app.examples.compute", "tests.unit.byref_handlers"],
                "task_types": ["make_blob", "blob_stats", "busy"],
                "num_replicas": 2,
                "max_ongoing_requests": 1,
            },
        },
        "workflows": {
            "store": "memory",
            "definitions": [
                {
                    "name": "gated_pair",
                    "steps": [
                        {"name": "make", "task_type": "make_blob", "input": {"size": "${input.size}"}},
                        {"name": "gate", "task_type": "sleep", "input": {"seconds": 2}, "depends_on": ["make"]},
                        {"name": "stats", "task_type": "blob_stats", "input": {"data": "${steps.make.result}"}, "depends_on": ["gate"]},
                    ],
                }
            ],
        },
    }
    serve.run(build_app(args), name="busy_holder", route_prefix="/busy_holder")
    try:
        with httpx.Client(base_url=serve_instance["http"] + "/busy_holder", timeout=60) as http:
            wait_until(lambda: http.get("/readyz").status_code == 200, 60, what="the busy_holder app")
            worker = serve.get_deployment_handle("HandlerWorker_blobs", "busy_holder")
            replicas = [name.rsplit("#", 1)[-1] for name in replica_actors("HandlerWorker_blobs", "busy_holder")]
            assert len(replicas) == 2

            def status(rid: str) -> dict[str, Any]:  # a key that is a replica's id reaches that replica
                return worker.options(session_id=rid).get_status.remote().result()["details"]

            run_id = http.post("/v1/workflows/gated_pair/runs", json={"input": {"size": MB}}).json()["run_id"]
            holder = wait_until(
                lambda: next((rid for rid in replicas if status(rid)["held_alone_bytes"] == MB), None),
                30,
                interval_s=0.02,
                what="the replica holding the bytes",
            )
            # Keep the holder busy past the gate's end.
            busy = worker.options(session_id=holder).run.remote(
                {"task_id": "busy", "task_type": "busy", "payload": {"seconds": 4}, "timeout_s": 30}
            )
            run = _ended(http, run_id, 60)
            busy.result()
        assert run["status"] == "succeeded", run["error"]
        got = {s["name"]: s for s in run["steps"]}
        assert got["stats"]["result"] == _stats(MB)
        assert got["make"]["attempts"] == 1  # never made again: the reader found its bytes
        assert got["stats"]["started_at"] >= got["gate"]["finished_at"]
        assert status(holder)["reused_results"] == 1 and status(holder)["held_alone_bytes"] == 0
    finally:
        serve.delete("busy_holder")


@pytest.mark.faults
def test_a_result_lost_with_its_worker_is_made_again(http: httpx.Client) -> None:
    run_id = http.post("/v1/workflows/big_result/runs", json={"input": {"size": 5 * MB, "pause": 4}}).json()["run_id"]

    def steps() -> dict[str, Any]:
        return {s["name"]: s for s in http.get(f"/v1/runs/{run_id}").json()["run"]["steps"]}

    wait_until(lambda: steps()["pause"]["status"] == "running", 60, interval_s=0.1, what="the pause after make")
    for actor in replica_actors("HandlerWorker_compute").values():
        ray.kill(actor, no_restart=True)  # the worker that owns the bytes: they are gone with it
    run = _ended(http, run_id, 120)
    assert run["status"] == "succeeded", run["error"]
    got = {s["name"]: s for s in run["steps"]}
    assert got["make"]["attempts"] == 2 and got["make"]["result"] == _marker(5 * MB)  # made again
    assert got["stats"]["result"] == _stats(5 * MB)
    wait_until(lambda: pool_settled(http, "HandlerWorker_compute", "compute"), 120, what="compute pool back")


@pytest.mark.faults
def test_a_value_held_alone_lost_with_its_replica_is_made_again_on_another(serve_instance: dict[str, Any]) -> None:
    """The replica holding a maker's bytes (no copy in the object store) dies before its reader
    is sent: the reader, keyed by that replica's id, goes to a replica that has nothing, answers
    ``lost_result``, and the maker runs again there."""
    args = {
        "pools": {
            "blobs": {
                "handler_modules": ["serve_app.examples.compute", "serve_app.examples.basic"],
                "task_types": ["make_blob", "blob_stats", "sleep"],
                "num_replicas": 2,
            }
        },
        "workflows": {
            "store": "memory",
            "definitions": [
                {
                    "name": "paused_pair",
                    "steps": [
                        {"name": "make", "task_type": "make_blob", "input": {"size": "${input.size}"}},
                        # On either replica: the kill may end it too, and then it runs again.
                        {"name": "pause", "task_type": "sleep", "input": {"seconds": 4}, "depends_on": ["make"], "retry": {"max_attempts": 3}},
                        {
                            "name": "stats",
                            "task_type": "blob_stats",
                            "input": {"data": "${steps.make.result}"},
                            "depends_on": ["pause"],
                            "retry": {"max_attempts": 3},  # a call routed before the death was noticed
                        },
                    ],
                }
            ],
        },
    }
    serve.run(build_app(args), name="held_loss", route_prefix="/held_loss")
    try:
        with httpx.Client(base_url=serve_instance["http"] + "/held_loss", timeout=60) as http:
            wait_until(lambda: http.get("/readyz").status_code == 200, 60, what="the held_loss app")
            run_id = http.post("/v1/workflows/paused_pair/runs", json={"input": {"size": 2 * MB}}).json()["run_id"]
            handle = serve.get_deployment_handle("HandlerWorker_blobs", "held_loss")
            actors = {name.rsplit("#", 1)[-1]: a for name, a in replica_actors("HandlerWorker_blobs", "held_loss").items()}
            assert len(actors) == 2

            def holder() -> str | None:
                for rid in actors:  # a key that is a replica's id reaches that replica (the pool's router)
                    if handle.options(session_id=rid).get_status.remote().result()["details"]["held_alone_bytes"] == 2 * MB:
                        return rid
                return None

            rid = wait_until(holder, 30, interval_s=0.02, what="the replica holding the bytes")
            ray.kill(actors[rid], no_restart=True)
            run = _ended(http, run_id, 120)
        assert run["status"] == "succeeded", run["error"]
        got = {s["name"]: s for s in run["steps"]}
        assert got["make"]["attempts"] == 2 and got["stats"]["result"] == _stats(2 * MB)
    finally:
        serve.delete("held_loss")

