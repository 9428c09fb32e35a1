"""The one ingress pipeline over HTTP and gRPC, in-process with the real engine and handlers.

Covers the review's defects 1, 5, 6, 7 and 9, the poisoned-listing bug (bad
bodies on the run routes), honest answers after a side effect, and the
envelope's shape. Each defect test failed on the code before the fix.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sqlite3
from typing import Any, AsyncIterator, Iterator

import grpc
import pytest
from starlette.testclient import TestClient

from serve_app.core.codec import ENVELOPE_KEY
from serve_app.core.models import RunResult, TaskRequest, TaskResult, WorkItem
from serve_app.ingress.auth import BearerAuth
from serve_app.ingress.http import build_http_app
from serve_app.ingress.operations import Backend
from serve_app.ingress.servicer import add_TaskServiceServicer_to_server
from serve_app.proto import serveflow_pb2 as pb
from serve_app.proto import serveflow_pb2_grpc as pb_grpc
from serve_app.runtime.config import AppConfig
from serve_app.runtime.dispatch import Dispatcher, ReadinessBoard
from serve_app.runtime.handlers import HandlerRegistry, handler
from serve_app.runtime.runner import HandlerRunner
from serve_app.testing import in_process_dispatcher, local_grpc_servicer
from serve_app.workflow.api import RunService
from serve_app.workflow.engine import RunEngine
from serve_app.workflow.store import SqliteRunStore
from tests.unit.test_workflow_engine import WORKFLOWS

TOKEN = "s3cret-token-0123456789"


async def _status() -> dict[str, Any]:
    return {"status": "healthy", "components": {}, "pools": {}}


@pytest.fixture
def parts(config: AppConfig, tmp_path: Any) -> Iterator[tuple[Backend, SqliteRunStore]]:
    dispatcher, board, pools = in_process_dispatcher(config)
    store = SqliteRunStore(str(tmp_path / "runs.sqlite3"))
    runs = RunService(RunEngine(store, dispatcher.submit, WORKFLOWS, owner="t", lease_s=5))
    yield Backend(dispatcher, board, _status, runs), store
    asyncio.run(store.close())
    pools.close()


BIG = 1 << 20  # room for the deepest bodies below: they must be refused for depth, not size


@pytest.fixture
def client(parts: tuple[Backend, SqliteRunStore]) -> Iterator[TestClient]:
    with TestClient(build_http_app(parts[0], max_body_bytes=BIG)) as c:
        yield c


def _registry(*fns: Any) -> HandlerRegistry:
    return HandlerRegistry({f.__serveflow_handler__.task_type: f.__serveflow_handler__ for f in fns})


def _structured(r: Any, status: int, code: str) -> dict[str, Any]:
    assert r.status_code == status, r.text
    body = r.json()
    assert body["success"] is False and body["error"]["code"] == code, body
    assert body["trace_id"] and "Traceback" not in r.text
    return body


# ------------------------------------------------- bad bodies on the run routes poisoned the listing

POISON = [
    b'{"input": {"x": NaN}}',
    b'{"input": {"x": Infinity}}',
    b'{"input": {"x": 1e400}}',
    b'{"input": {"x": 123456789012345678901234567890}}',
    b'{"input": {"x": "\\ud800"}}',
    b'{"input": {"\\udfff": 1}}',
    b'{"input": {"x": 1, "x": 2}}',
    b'{"input": ' + b'[' * 100 + b']' * 100 + b'}',
    b'{"input": ' + b'[' * 50_000 + b']' * 50_000 + b'}',
    b'{"input": {"x": "\xff\xfe"}}',
    b'{"wait": true, "input": {"x": NaN}}',
]


@pytest.mark.parametrize("raw", POISON, ids=range(len(POISON)))
def test_bad_run_bodies_are_400_and_create_nothing(client: TestClient, raw: bytes) -> None:
    r = client.post("/v1/workflows/diamond/runs", content=raw, headers={"content-type": "application/json"})
    _structured(r, 400, "invalid_request")
    listed = client.get("/v1/runs")
    assert listed.status_code == 200 and listed.json()["runs"] == []


def test_the_same_bodies_over_grpc(parts: tuple[Backend, SqliteRunStore], config: AppConfig) -> None:
    async def scenario() -> None:
        async with _grpc_server(parts[0], BIG) as target, grpc.aio.insecure_channel(target) as ch:
            stub = pb_grpc.TaskServiceStub(ch)
            for raw in POISON[:-2]:
                doc = raw.decode("utf-8", "surrogatepass")
                input_json = doc[doc.index(":") + 1 : -1]
                with pytest.raises(grpc.aio.AioRpcError) as info:
                    await stub.StartRun(pb.StartRunRequest(workflow="diamond", input_json=input_json), timeout=5)
                assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT, input_json[:40]
                env = RunResult.model_validate_json(dict(info.value.trailing_metadata())[ENVELOPE_KEY])
                assert env.error is not None and env.error.code == "invalid_request" and "input_json" in env.error.message
            listed = await stub.ListRuns(pb.ListRunsRequest(), timeout=5)
            assert json.loads(listed.runs_json) == []

    asyncio.run(scenario())


def test_rows_written_before_the_rules_still_render(client: TestClient, parts: tuple[Backend, SqliteRunStore]) -> None:
    r = client.post("/v1/workflows/diamond/runs", json={"input": {"text": "ok", "n": 3}, "wait": True})
    run_id = r.json()["run_id"]
    db = sqlite3.connect(parts[1].path)
    # What the old code let in: json.dumps escapes a lone surrogate, and writes NaN.
    db.execute("UPDATE runs SET input_json=? WHERE run_id=?", ('{"text": "\\ud800", "n": NaN}', run_id))
    db.execute("UPDATE steps SET result_json=? WHERE run_id=? AND name='a'", ('{"message": "\\udc00x"}', run_id))
    db.commit()
    db.close()
    for path in ("/v1/runs", f"/v1/runs/{run_id}"):
        assert client.get(path).status_code == 200
    run = client.get(f"/v1/runs/{run_id}").json()["run"]
    assert run["input"] == {"text": "\ufffd", "n": None} and run["steps"][0]["result"] == {"message": "\ufffdx"}


def test_a_handler_result_that_cannot_be_rendered_is_a_handler_error(client: TestClient) -> None:
    @handler("nan")
    def nan(payload: dict[str, Any]) -> Any:
        return {"value": float("nan"), "text": "\ud800"}

    runner = HandlerRunner(_registry(nan), max_concurrency=1, max_stuck_calls=1)
    res = asyncio.run(runner.run(WorkItem(task_id="t", task_type="nan", payload={}, timeout_s=5)))
    runner.close()
    assert res.error is not None and res.error.code == "handler_error" and "cannot be rendered" in res.error.message


# ------------------------------------------------- honest answers


def test_a_failure_after_the_run_was_stored_names_the_run(client: TestClient, parts: tuple[Backend, SqliteRunStore]) -> None:
    engine = parts[0].runs.engine  # type: ignore[union-attr]

    async def broken_wait(run_id: str, timeout_s: float) -> Any:
        raise RuntimeError("store went away while waiting")

    engine.wait = broken_wait  # type: ignore[method-assign]
    r = client.post("/v1/workflows/diamond/runs", json={"input": {"text": "x", "n": 1}, "wait": True})
    body = _structured(r, 500, "internal")
    details = body["error"]["details"]
    assert details["created"] is True and details["run_id"] and "store went away" not in r.text
    assert client.get(f"/v1/runs/{details['run_id']}").status_code == 200  # it does exist, as the answer said


# ------------------------------------------------- one envelope, one shape


def test_task_and_run_envelopes_render_every_field_the_same_way(client: TestClient) -> None:
    task = client.post("/v1/tasks", json={"task_type": "nope"}).json()
    run = client.get("/v1/runs/nope").json()
    shared = {"success", "error", "duration_ms", "trace_id"}
    assert set(task) == shared | {"task_id", "task_type", "result"}
    assert set(run) == shared | {"run_id", "workflow", "created", "run", "runs"}
    assert task["result"] is None and run["run"] is None and run["created"] is None  # nulls rendered, not dropped


def test_unmatched_routes_and_methods_go_through_the_pipeline(client: TestClient) -> None:
    missing = _structured(client.get("/nowhere"), 404, "not_found")
    assert missing["error"]["message"] == "no route for /nowhere"
    wrong = client.delete("/v1/tasks")
    _structured(wrong, 405, "method_not_allowed")
    assert wrong.headers["allow"] == "POST"


# ------------------------------------------------- defect 1: gRPC StartRun had no size cap


@contextlib.asynccontextmanager
async def _grpc_server(backend: Backend, limit: int) -> AsyncIterator[str]:
    server = grpc.aio.server(options=[("grpc.max_receive_message_length", 4 * BIG)])
    # The same servicer function Serve's proxy uses (tolerant deserializers).
    add_TaskServiceServicer_to_server(local_grpc_servicer(backend, max_payload_bytes=limit), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        yield f"127.0.0.1:{port}"
    finally:
        await server.stop(0)


def test_grpc_start_run_input_is_size_capped(parts: tuple[Backend, SqliteRunStore], config: AppConfig) -> None:
    async def scenario() -> None:
        async with _grpc_server(parts[0], config.max_body_bytes) as target, grpc.aio.insecure_channel(target) as ch:
            stub = pb_grpc.TaskServiceStub(ch)
            big = json.dumps({"text": "x" * (config.max_body_bytes + 1), "n": 1})
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await stub.StartRun(pb.StartRunRequest(workflow="diamond", input_json=big), timeout=5)
            assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            env = RunResult.model_validate_json(dict(info.value.trailing_metadata())[ENVELOPE_KEY])
            assert env.error is not None and env.error.code == "payload_too_large"
            assert json.loads((await stub.ListRuns(pb.ListRunsRequest(), timeout=5)).runs_json) == []

    asyncio.run(scenario())


# ------------------------------------------------- defect 5: a handler's own TimeoutError


def test_only_the_deadline_is_a_timeout() -> None:
    @handler("socket_async")
    async def socket_async(payload: dict[str, Any]) -> None:
        raise TimeoutError("timed out talking to the database")

    @handler("socket_sync")
    def socket_sync(payload: dict[str, Any]) -> None:
        raise TimeoutError("timed out talking to the database")

    @handler("slow")
    async def slow(payload: dict[str, Any]) -> None:
        await asyncio.sleep(5)

    runner = HandlerRunner(_registry(socket_async, socket_sync, slow), max_concurrency=2, max_stuck_calls=2)

    async def run(task_type: str, timeout_s: float = 2.0) -> TaskResult:
        return await runner.run(WorkItem(task_id="t", task_type=task_type, payload={}, timeout_s=timeout_s))

    for task_type in ("socket_async", "socket_sync"):
        res = asyncio.run(run(task_type))
        assert res.error is not None and res.error.code == "handler_error" and not res.error.retryable, res.error
        assert "TimeoutError" in res.error.message and "deadline" not in res.error.message
    res = asyncio.run(run("slow", 0.1))
    assert res.error is not None and res.error.code == "timeout" and "0.1s deadline" in res.error.message
    runner.close()


# ------------------------------------------------- defect 6: probes behind a route prefix


def test_probes_stay_open_behind_a_route_prefix_with_auth_on(parts: tuple[Backend, SqliteRunStore], config: AppConfig) -> None:
    app = build_http_app(parts[0], max_body_bytes=config.max_body_bytes, auth=BearerAuth(TOKEN))
    # As Serve calls an app deployed at route_prefix=/api: root_path is the prefix, path the full path.
    with TestClient(app, root_path="/api") as c:
        for probe in ("/api/healthz", "/api/readyz", "/api/openapi.json"):
            assert c.get(probe).status_code == 200, probe
        _structured(c.get("/api/v1/status"), 401, "unauthenticated")
        assert c.get("/api/v1/status", headers={"authorization": f"Bearer {TOKEN}"}).status_code == 200


# ------------------------------------------------- defect 7: the dispatcher swallowed BaseException


@pytest.mark.parametrize("exc", [KeyboardInterrupt(), SystemExit(3), asyncio.CancelledError()])
def test_the_dispatcher_lets_interrupts_and_cancellation_through(config: AppConfig, exc: BaseException) -> None:
    async def pool(name: str, item: WorkItem) -> TaskResult:
        raise exc

    board = ReadinessBoard()
    board.update({p: {"ready": True} for p in config.pools})
    with pytest.raises(type(exc)):
        asyncio.run(Dispatcher(config, board, pool).submit(TaskRequest(task_type="echo")))


# ------------------------------------------------- defect 9: workflows disabled


def test_without_workflows_every_workflow_route_agrees(config: AppConfig) -> None:
    dispatcher, board, pools = in_process_dispatcher(config)
    backend = Backend(dispatcher, board, _status)
    with TestClient(build_http_app(backend, max_body_bytes=config.max_body_bytes)) as c:
        answers = [
            c.get("/v1/workflows"),
            c.get("/v1/workflows/diamond"),
            c.post("/v1/workflows/diamond/runs", json={}),
            c.get("/v1/runs"),
            c.get("/v1/runs/x"),
        ]
        for r in answers:
            assert _structured(r, 404, "not_found")["error"]["message"] == "workflows are not enabled"

    async def over_grpc() -> None:
        async with _grpc_server(backend, config.max_body_bytes) as target, grpc.aio.insecure_channel(target) as ch:
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await pb_grpc.TaskServiceStub(ch).ListRuns(pb.ListRunsRequest(), timeout=5)
            assert info.value.code() == grpc.StatusCode.NOT_FOUND

    asyncio.run(over_grpc())
    pools.close()


# ------------------------------------------------- typed run input (#12)


TYPED = {"type": "object", "required": ["text", "n"], "properties": {"text": {"type": "string"}, "n": {"type": "integer", "minimum": 0}}}


@pytest.fixture
def typed(config: AppConfig) -> Iterator[TestClient]:
    from serve_app.workflow import WorkflowSpec

    spec = WORKFLOWS["diamond"].model_copy(update={"input_schema": TYPED})
    dispatcher, board, pools = in_process_dispatcher(config)
    store = SqliteRunStore(":memory:")
    runs = RunService(RunEngine(store, dispatcher.submit, {**WORKFLOWS, "diamond": WorkflowSpec.model_validate(spec.model_dump())}, owner="t"))
    with TestClient(build_http_app(Backend(dispatcher, board, _status, runs), max_body_bytes=BIG)) as c:
        yield c
    asyncio.run(store.close())
    pools.close()


@pytest.mark.parametrize(
    "run_input, loc",
    [
        ({"text": "x"}, ["input", "n"]),
        ({"text": "x", "n": "seven"}, ["input", "n"]),
        ({"text": 3, "n": -1}, ["input", "n"]),
        ({}, ["input", "n"]),
    ],
)
def test_a_run_whose_input_does_not_match_is_refused_and_not_created(typed: TestClient, run_input: dict[str, Any], loc: list[str]) -> None:
    body = _structured(typed.post("/v1/workflows/diamond/runs", json={"input": run_input}), 422, "validation_error")
    assert loc in [e["loc"] for e in body["error"]["details"]["errors"]]
    assert "input schema of 'diamond'" in body["error"]["message"]
    assert typed.get("/v1/runs").json()["runs"] == []
    ok = typed.post("/v1/workflows/diamond/runs", json={"input": {"text": "x", "n": 3}, "wait": True})
    assert ok.status_code == 200 and ok.json()["run"]["status"] == "succeeded"
