"""gRPC through Serve's real gRPC proxy: same envelope and semantics as HTTP."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any, Iterator

import grpc
import httpx
import pytest
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase

from serve_app.client.sdk import AsyncServeflowClient, RetryPolicy, ServeflowClient
from serve_app.core.codec import ENVELOPE_KEY
from serve_app.core.models import TaskResult
from serve_app.proto import serveflow_pb2 as pb
from serve_app.proto import serveflow_pb2_grpc as pb_grpc

# Several apps may be deployed during the session; name ours.
APP = (("application", "serveflow"),)


@pytest.fixture
def stub(serve_instance: dict[str, Any], http: httpx.Client) -> Iterator[pb_grpc.TaskServiceStub]:
    with grpc.insecure_channel(serve_instance["grpc"]) as ch:
        yield pb_grpc.TaskServiceStub(ch)


def _call(stub: pb_grpc.TaskServiceStub, req: pb.TaskRequest, timeout: float = 30) -> tuple[grpc.StatusCode, TaskResult, str]:
    try:
        msg = stub.SubmitTask(req, timeout=timeout, metadata=APP)
    except grpc.RpcError as err:
        trailers = dict(err.trailing_metadata() or ())
        assert ENVELOPE_KEY in trailers, f"no envelope in trailers: {err.code()} {err.details()}"
        return err.code(), TaskResult.model_validate_json(trailers[ENVELOPE_KEY]), err.details() or ""
    from serve_app.core.codec import task_from_proto

    return grpc.StatusCode.OK, task_from_proto(msg), ""


CASES = [
    ("success", {"task_type": "fib", "payload": {"n": 20}}, grpc.StatusCode.OK, None),
    ("malformed payload", {"task_type": "echo", "payload_json": "{nope"}, grpc.StatusCode.INVALID_ARGUMENT, "invalid_request"),
    ("validation", {"task_type": "echo", "payload": {"message": 1}}, grpc.StatusCode.INVALID_ARGUMENT, "validation_error"),
    ("unknown type", {"task_type": "teleport"}, grpc.StatusCode.NOT_FOUND, "unknown_task_type"),
    ("handler error", {"task_type": "fail", "payload": {"message": "m"}}, grpc.StatusCode.UNKNOWN, "handler_error"),
    ("timeout", {"task_type": "sleep", "payload": {"seconds": 5}, "timeout_s": 0.3}, grpc.StatusCode.DEADLINE_EXCEEDED, "timeout"),
    ("too large", {"task_type": "echo", "payload": {"message": "x" * 70_000}}, grpc.StatusCode.RESOURCE_EXHAUSTED, "payload_too_large"),
]


def _proto(case: dict[str, Any], task_id: str) -> pb.TaskRequest:
    payload_json = case.get("payload_json", json.dumps(case.get("payload", {})))
    return pb.TaskRequest(task_type=case["task_type"], payload_json=payload_json, task_id=task_id, timeout_s=case.get("timeout_s", 0))


@pytest.mark.parametrize("name, case, code, error_code", CASES, ids=[c[0] for c in CASES])
def test_status_codes(stub: pb_grpc.TaskServiceStub, name: str, case: dict[str, Any], code: grpc.StatusCode, error_code: str | None) -> None:
    got, env, details = _call(stub, _proto(case, f"grpc-{name.replace(' ', '-')}"))
    assert got == code, (got, env)
    if error_code is None:
        assert env.success and env.result == {"n": 20, "value": 6765}
    else:
        assert env.error is not None and env.error.code == error_code
        assert details == env.error.message
        assert "Traceback" not in details and "ray" not in details.lower()


def test_parity_with_http(stub: pb_grpc.TaskServiceStub, http: httpx.Client) -> None:
    """The same inputs give the same envelope over HTTP and gRPC (but timing and trace ids)."""
    volatile = {"duration_ms", "trace_id"}
    for name, case, _, _ in CASES:
        if "payload_json" in case:
            continue  # HTTP's equivalent is a malformed body: covered separately
        task_id = f"parity-{name.replace(' ', '-')}"
        _, g_env, _ = _call(stub, _proto(case, task_id))
        body = {k: v for k, v in case.items()}
        body["task_id"] = task_id
        h = http.post("/v1/tasks", json=body)
        h_env = h.json()
        g = g_env.model_dump(mode="json")
        assert {k: v for k, v in g.items() if k not in volatile} == {k: v for k, v in h_env.items() if k not in volatile}, name


def test_client_deadline_is_honoured(stub: pb_grpc.TaskServiceStub) -> None:
    started = time.monotonic()
    with pytest.raises(grpc.RpcError) as info:
        stub.SubmitTask(pb.TaskRequest(task_type="sleep", payload_json='{"seconds": 10}'), timeout=0.5, metadata=APP)
    assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert time.monotonic() - started < 3


def test_reflection_lists_the_service(serve_instance: dict[str, Any]) -> None:
    with grpc.insecure_channel(serve_instance["grpc"]) as ch:
        services = ProtoReflectionDescriptorDatabase(ch).get_services()
    assert "serveflow.TaskService" in services


def test_sync_client_and_status(serve_instance: dict[str, Any], http: httpx.Client) -> None:
    with ServeflowClient(serve_instance["grpc"], application="serveflow") as client:
        res = client.submit("echo", {"message": "via client"})
        assert res.success and res.result == {"message": "via client"}
        status = client.status()
    assert set(status["pools"]) == {"general", "compute", "fragile", "cold"}


def test_async_client_concurrent(serve_instance: dict[str, Any], http: httpx.Client) -> None:
    async def main() -> list[TaskResult]:
        async with AsyncServeflowClient(serve_instance["grpc"], application="serveflow") as client:
            return await asyncio.gather(*[client.submit("fib", {"n": i}) for i in range(20)])

    results = asyncio.run(main())
    assert [r.result["n"] for r in results] == list(range(20))


def test_client_retries_overload_until_success(serve_instance: dict[str, Any], http: httpx.Client) -> None:
    """Saturate the fragile pool (2 ongoing + 2 queued); retrying clients all get through."""
    policy = RetryPolicy(max_attempts=20, initial_backoff_s=0.2, max_backoff_s=1.0)

    async def main() -> list[TaskResult]:
        async with AsyncServeflowClient(serve_instance["grpc"], application="serveflow", retry=policy) as client:
            return await asyncio.gather(*[client.submit("stall", {"seconds": 0.5}) for _ in range(8)])

    results = asyncio.run(main())
    assert all(r.success for r in results), [r.error for r in results if not r.success]
