"""The gRPC layer over a real grpc.aio server and the real dispatcher/handlers (no Ray)."""

from __future__ import annotations

import json
from typing import Any, AsyncIterator

import grpc
import pytest

from serve_app.client.sdk import AsyncServeflowClient, RetryPolicy
from serve_app.runtime.config import AppConfig
from serve_app.core.codec import ENVELOPE_KEY, task_from_proto, task_to_proto
from serve_app.core.models import ErrorInfo, TaskResult
from serve_app.proto import serveflow_pb2 as pb
from serve_app.proto import serveflow_pb2_grpc as pb_grpc
from serve_app.ingress.operations import Backend
from serve_app.testing import in_process_dispatcher, local_grpc_servicer

pytestmark = pytest.mark.anyio


async def _status() -> dict[str, Any]:
    return {"status": "healthy", "pools": {}}


@pytest.fixture
async def target(config: AppConfig) -> AsyncIterator[str]:
    dispatcher, board, pools = in_process_dispatcher(config)
    server = grpc.aio.server()
    pb_grpc.add_TaskServiceServicer_to_server(
        local_grpc_servicer(Backend(dispatcher, board, _status), max_payload_bytes=config.max_body_bytes), server
    )
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    yield f"127.0.0.1:{port}"
    await server.stop(0)
    pools.close()


async def _raw(target: str, req: pb.TaskRequest) -> tuple[grpc.StatusCode, TaskResult | None, str]:
    async with grpc.aio.insecure_channel(target) as ch:
        stub = pb_grpc.TaskServiceStub(ch)
        try:
            msg = await stub.SubmitTask(req, timeout=10)
            return grpc.StatusCode.OK, task_from_proto(msg), ""
        except grpc.aio.AioRpcError as err:
            trailers = dict(err.trailing_metadata() or ())
            env = TaskResult.model_validate_json(trailers[ENVELOPE_KEY]) if ENVELOPE_KEY in trailers else None
            return err.code(), env, err.details() or ""


@pytest.mark.parametrize(
    "req, code, error_code",
    [
        (pb.TaskRequest(task_type="echo", payload_json='{"message": "hi"}'), grpc.StatusCode.OK, None),
        (pb.TaskRequest(task_type="echo", payload_json="{oops"), grpc.StatusCode.INVALID_ARGUMENT, "invalid_request"),
        (pb.TaskRequest(task_type="echo", payload_json="[1]"), grpc.StatusCode.INVALID_ARGUMENT, "validation_error"),
        (pb.TaskRequest(task_type="", payload_json="{}"), grpc.StatusCode.INVALID_ARGUMENT, "validation_error"),
        (pb.TaskRequest(task_type="nope"), grpc.StatusCode.NOT_FOUND, "unknown_task_type"),
        (pb.TaskRequest(task_type="fail"), grpc.StatusCode.UNKNOWN, "handler_error"),
        (
            pb.TaskRequest(task_type="sleep", payload_json='{"seconds": 3}', timeout_s=0.05),
            grpc.StatusCode.DEADLINE_EXCEEDED,
            "timeout",
        ),
        (
            pb.TaskRequest(task_type="echo", payload_json=json.dumps({"message": "x" * 5000})),
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            "payload_too_large",
        ),
    ],
)
async def test_status_codes_and_trailer_envelope(target: str, req: pb.TaskRequest, code: grpc.StatusCode, error_code: str | None) -> None:
    got_code, env, details = await _raw(target, req)
    assert got_code == code
    assert env is not None
    if error_code is None:
        assert env.success and env.result == {"message": "hi"}
    else:
        assert env.error is not None and env.error.code == error_code
        assert details == env.error.message and "Traceback" not in details


def test_proto_round_trip_keeps_json_exactly() -> None:
    res = TaskResult(
        task_id="a",
        task_type="t",
        success=False,
        result=None,
        error=ErrorInfo(code="timeout", message="m", retryable=True, details={"big": 2**60, "f": 1.5}),
        duration_ms=3.0,
        trace_id="0" * 32,
    )
    assert task_from_proto(task_to_proto(res)) == res
    ok = TaskResult(task_id="b", success=True, result={"n": 2**60, "l": [1, "x", None]})
    assert task_from_proto(task_to_proto(ok)).result == {"n": 2**60, "l": [1, "x", None]}


async def test_async_client_success_status_and_no_retry_for_handler_errors(target: str) -> None:
    async with AsyncServeflowClient(target) as client:
        ok = await client.submit("fib", {"n": 10}, task_id="fib-10")
        assert ok.success and ok.result == {"n": 10, "value": 55} and ok.task_id == "fib-10"
        failed = await client.submit("fail", {"retryable": True})
        assert failed.error is not None and failed.error.code == "handler_error"
        assert (await client.status())["status"] == "healthy"


async def test_client_retries_unreachable_server_then_reports_structured_error() -> None:
    slept: list[float] = []
    policy = RetryPolicy(max_attempts=3, initial_backoff_s=0.01, max_backoff_s=0.02)
    from serve_app.client.sdk import ServeflowClient

    with ServeflowClient("127.0.0.1:1", retry=policy, sleep=slept.append, default_deadline_s=2) as client:
        res = client.submit("echo", {"message": "x"})
    assert res.error is not None and res.error.code == "unavailable" and res.error.retryable
    assert res.error.details["transport"] is True
    assert len(slept) == 2  # three attempts


def test_backoff_respects_retry_after_and_cap() -> None:
    policy = RetryPolicy(initial_backoff_s=0.1, max_backoff_s=1.0)
    res = TaskResult(success=False, error=ErrorInfo(code="overloaded", message="", retryable=True, details={"retry_after_s": 0.5}))
    assert all(0.5 <= policy.backoff(a, res) <= 1.0 for a in range(1, 10))
    assert policy.should_retry(res, 1) and not policy.should_retry(res, policy.max_attempts)
    not_retryable = TaskResult(success=False, error=ErrorInfo(code="handler_error", message="", retryable=True))
    assert not policy.should_retry(not_retryable, 1)


def test_generated_code_is_up_to_date() -> None:
    import pathlib
    import subprocess
    import sys

    script = pathlib.Path(__file__).parents[2] / "scripts" / "gen_proto.py"
    out = subprocess.run([sys.executable, str(script), "--check"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
