"""Single tasks over real HTTP against real Ray Serve."""

from __future__ import annotations

import concurrent.futures as cf
import json
import os
from typing import Any

import httpx
import psutil
import ray

from tests.integration.faults import replica_actors

ENVELOPE_KEYS = {"task_id", "task_type", "success", "result", "error", "duration_ms", "trace_id"}


def _post(http: httpx.Client, body: Any = None, **kw: Any) -> httpx.Response:
    if body is not None:
        kw["json"] = body
    return http.post("/v1/tasks", **kw)


def _err(r: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert r.status_code == status, r.text
    body = r.json()
    assert set(body) == ENVELOPE_KEYS
    assert body["success"] is False and body["error"]["code"] == code
    assert "Traceback" not in r.text and 'File "' not in r.text
    return body


def test_tasks_on_two_pools(http: httpx.Client) -> None:
    r = _post(http, {"task_type": "echo", "payload": {"message": "hello"}})
    assert r.status_code == 200
    body = r.json()
    assert set(body) == ENVELOPE_KEYS and body["success"] and body["result"] == {"message": "hello"}
    assert len(body["trace_id"]) == 32 and body["task_id"]
    r = _post(http, {"task_type": "fib", "payload": {"n": 30}, "task_id": "fib-30"})
    assert r.json()["result"] == {"n": 30, "value": 832040} and r.json()["task_id"] == "fib-30"


def test_async_handler_and_no_result(http: httpx.Client) -> None:
    assert _post(http, {"task_type": "sleep", "payload": {"seconds": 0.05}}).json()["result"] == {"slept": 0.05}
    r = _post(http, {"task_type": "noop"})
    assert r.status_code == 200 and r.json()["result"] is None


def test_bad_json_is_400(http: httpx.Client) -> None:
    _err(_post(http, content=b'{"task_type": ', headers={"content-type": "application/json"}), 400, "invalid_request")


def test_request_validation_is_422(http: httpx.Client) -> None:
    body = _err(_post(http, {"task_type": "echo", "timeout_s": "soon"}), 422, "validation_error")
    assert body["error"]["details"]["errors"][0]["loc"] == ["timeout_s"]


def test_payload_validation_is_422_from_the_worker(http: httpx.Client) -> None:
    body = _err(_post(http, {"task_type": "fib", "payload": {"n": -1}}), 422, "validation_error")
    assert body["error"]["details"]["errors"][0]["loc"] == ["n"]


def test_unknown_task_type_is_404(http: httpx.Client) -> None:
    body = _err(_post(http, {"task_type": "does_not_exist"}), 404, "unknown_task_type")
    assert "echo" in body["error"]["details"]["known_task_types"]


def test_handler_exception_is_structured(http: httpx.Client) -> None:
    body = _err(_post(http, {"task_type": "fail", "payload": {"message": "kaput"}}), 200, "handler_error")
    assert body["error"]["message"] == "handler 'fail' raised DeliberateFailure: kaput"
    assert body["error"]["retryable"] is False
    body = _err(_post(http, {"task_type": "fail", "payload": {"retryable": True}}), 200, "handler_error")
    assert body["error"]["retryable"] is True


def test_timeout_is_504(http: httpx.Client) -> None:
    body = _err(_post(http, {"task_type": "sleep", "payload": {"seconds": 10}, "timeout_s": 0.3}), 504, "timeout")
    assert body["error"]["retryable"] is True and body["duration_ms"] < 5000


def test_body_limit_is_413(http: httpx.Client) -> None:
    big = {"task_type": "echo", "payload": {"message": "x" * 70_000}}
    _err(_post(http, content=json.dumps(big).encode(), headers={"content-type": "application/json"}), 413, "payload_too_large")


def test_unknown_route_and_method(http: httpx.Client) -> None:
    _err(http.get("/v2/nothing"), 404, "not_found")
    _err(http.delete("/v1/tasks"), 405, "method_not_allowed")


def test_handler_failures_do_not_affect_other_requests(http: httpx.Client) -> None:
    def one(i: int) -> tuple[int, httpx.Response]:
        kind = i % 3
        if kind == 0:
            return i, _post(http, {"task_type": "fail", "payload": {"message": f"f{i}"}})
        if kind == 1:
            return i, _post(http, {"task_type": "echo", "payload": {"message": f"e{i}"}})
        return i, _post(http, {"task_type": "fib", "payload": {"n": i}})

    with cf.ThreadPoolExecutor(8) as pool:
        results = list(pool.map(one, range(30)))
    for i, r in results:
        if i % 3 == 0:
            assert r.status_code == 200 and r.json()["error"]["message"].endswith(f"f{i}")
        else:
            assert r.status_code == 200, r.text
    assert http.get("/readyz").status_code == 200


def test_backpressure_is_503_overloaded_with_retry_after(http: httpx.Client) -> None:
    # The fragile pool takes 2 ongoing + 2 queued requests; the rest are refused at once.
    def stall(_: int) -> httpx.Response:
        return _post(http, {"task_type": "stall", "payload": {"seconds": 2}})

    with cf.ThreadPoolExecutor(10) as pool:
        responses = list(pool.map(stall, range(10)))
    codes = sorted(r.status_code for r in responses)
    assert codes.count(200) >= 2, codes
    overloaded = [r for r in responses if r.status_code == 503]
    assert overloaded, codes
    for r in overloaded:
        assert r.json()["error"]["code"] == "overloaded" and r.json()["error"]["retryable"] is True
        assert r.headers["retry-after"] == "1"
    assert set(codes) <= {200, 503}


def test_liveness_readiness_status(http: httpx.Client) -> None:
    assert http.get("/healthz").json() == {"status": "alive"}
    ready = http.get("/readyz")
    assert ready.status_code == 200 and ready.json()["pools"] == ["cold", "compute", "fragile", "general"]
    status = http.get("/v1/status").json()
    assert set(status["pools"]) == {"general", "compute", "fragile", "cold"}
    for name, pool in status["pools"].items():
        assert pool["status"] == "healthy", pool
        if pool["replicas"]["running"]:  # answered by a replica
            assert pool["details"]["reported"]["details"]["replica_id"]
        else:  # the cold pool, at zero by design until its first request (test_scaling.py)
            assert name == "cold" and pool["details"]["reported"] == {"scaled_to_zero": True}
    assert status["components"]["Coordinator"]["status"] == "healthy"
    assert status["components"]["OrganismManager"]["status"] == "healthy"
    assert {"Coordinator", "OrganismManager", "MetricsCollector", "HandlerWorker_general"} <= set(status["deployments"])
    assert http.get("/openapi.json").json()["paths"]["/v1/tasks"]["post"]["operationId"] == "submitTask"


def test_session_cluster_runs_the_default_serve_profile(serve_instance: dict[str, Any], http: httpx.Client) -> None:
    """connect() started this cluster with serveflow's default profile: Serve's throughput mode
    (gRPC between replicas) with HAProxy in front of the Coordinator (direct ingress), whose
    replicas drain for 2 s when they stop, not 30."""
    def switches(_self: Any) -> tuple[Any, ...]:
        from ray.serve._private import constants

        return (
            constants.RAY_SERVE_USE_GRPC_BY_DEFAULT,
            constants.RAY_SERVE_ENABLE_DIRECT_INGRESS,
            constants.RAY_SERVE_ENABLE_HA_PROXY,
            constants.RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S,
        )

    replica = next(iter(replica_actors("Coordinator").values()))
    assert ray.get(replica.__ray_call__.remote(switches), timeout=30) == (True, True, True, 2.0)
    # Requests reach the Coordinator through this cluster's own HAProxy (conftest moved its files).
    haproxy = [p for p in psutil.process_iter(["name", "cmdline"]) if p.info["name"] == "haproxy"]
    own_dir = os.path.dirname(os.environ["RAY_SERVE_HAPROXY_CONFIG_FILE_LOC"]) + "/"  # Serve adds a folder per node
    assert any(own_dir in " ".join(p.info["cmdline"] or []) for p in haproxy), [p.info for p in haproxy]
    assert http.post("/v1/tasks", json={"task_type": "echo", "payload": {"message": "via haproxy"}}).json()["success"]


def test_replicas_call_downstream_over_the_clusters_transport(serve_instance: dict[str, Any], http: httpx.Client) -> None:
    """This test process imported Serve before connect() set the profile, so the handles it bound
    into the graph use actor calls; the Coordinator and the OrganismManager remake theirs, which
    then use the cluster's transport (gRPC in the default profile). Only calls that carry results
    kept by reference go as actor calls (conftest makes out-of-band ObjectRefs an error)."""
    import ray.serve

    def transports(_self: Any) -> list[tuple[str, bool]]:
        import gc

        from ray.serve.handle import DeploymentHandle

        frozen = gc.get_freeze_count() > 0  # Serve's throughput mode freezes the start-up objects
        gc.unfreeze()
        try:
            return sorted(
                {
                    (o.deployment_name, o.handle_options._by_reference)
                    for o in gc.get_objects()
                    if isinstance(o, DeploymentHandle) and o.is_initialized
                }
            )
        finally:
            if frozen:
                gc.freeze()

    assert ray.serve.handle.DeploymentHandle("x", "y").handle_options._by_reference  # the premise
    assert _post(http, {"task_type": "echo", "payload": {"message": "over gRPC"}}).json()["success"]
    for deployment, targets in (("Coordinator", {"OrganismManager", "HandlerWorker_general"}),
                                ("OrganismManager", {"MetricsCollector", "HandlerWorker_general"})):
        replica = next(iter(replica_actors(deployment).values()))
        used = ray.get(replica.__ray_call__.remote(transports), timeout=30)
        assert {(t, False) for t in targets} <= set(used), f"{deployment} does not call over gRPC: {used}"
        by_actor_call = {name for name, by_ref in used if by_ref}
        assert by_actor_call <= ({n for n, _ in used if n.startswith("HandlerWorker_")} if deployment == "Coordinator" else set()), used
