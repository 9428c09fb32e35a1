"""Auth, malformed messages, idempotent re-sends, the load tool and fuzzed input (no Ray)."""

from __future__ import annotations

import asyncio
import json
from typing import Any, AsyncIterator, Iterator

import grpc
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from starlette.testclient import TestClient

from serve_app.ingress.auth import BearerAuth
from serve_app.client.sdk import AsyncServeflowClient
from serve_app.runtime.config import AppConfig
from serve_app.runtime.dispatch import Dispatcher, ReadinessBoard
from serve_app.core.errors import Unavailable, Unauthenticated
from serve_app.core.codec import ENVELOPE_KEY
from serve_app.ingress.servicer import add_TaskServiceServicer_to_server
from serve_app.ingress.http import build_http_app
from serve_app.ingress.operations import Backend
from serve_app.client.load import LoadConfig, run_load
from serve_app.core.models import TaskRequest, TaskResult, WorkItem
from serve_app.testing import in_process_dispatcher, local_grpc_servicer
from serve_app.workflow.api import RunService
from serve_app.workflow.engine import RunEngine
from serve_app.workflow.store import SqliteRunStore

TOKEN = "s3cret-token-0123456789"


async def _status() -> dict[str, Any]:
    return {"status": "healthy"}


def test_bearer_auth() -> None:
    auth = BearerAuth(TOKEN)
    auth.check(f"Bearer {TOKEN}")
    auth.check(f"bearer {TOKEN}")
    for bad in (None, "", TOKEN, "Bearer", "Bearer wrong", f"Basic {TOKEN}"):
        with pytest.raises(Unauthenticated):
            auth.check(bad)
    BearerAuth(None).check(None)


@pytest.fixture
def secured(config: AppConfig) -> Iterator[TestClient]:
    dispatcher, board, pools = in_process_dispatcher(config)
    app = build_http_app(Backend(dispatcher, board, _status), max_body_bytes=config.max_body_bytes, auth=BearerAuth(TOKEN))
    with TestClient(app) as c:
        yield c
    pools.close()


def test_http_auth(secured: TestClient) -> None:
    r = secured.post("/v1/tasks", json={"task_type": "echo", "payload": {"message": "x"}})
    assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
    assert r.json()["error"]["code"] == "unauthenticated"
    assert secured.get("/v1/status", headers={"authorization": "Bearer nope"}).status_code == 401
    ok = secured.post("/v1/tasks", json={"task_type": "echo", "payload": {"message": "x"}}, headers={"authorization": f"Bearer {TOKEN}"})
    assert ok.status_code == 200
    for open_path in ("/healthz", "/readyz", "/openapi.json"):
        assert secured.get(open_path).status_code == 200


@pytest.fixture
async def grpc_target(config: AppConfig) -> AsyncIterator[str]:
    dispatcher, board, pools = in_process_dispatcher(config)
    server = grpc.aio.server()
    # The same servicer function Serve's proxy uses: tolerant deserializers.
    add_TaskServiceServicer_to_server(
        local_grpc_servicer(Backend(dispatcher, board, _status), max_payload_bytes=config.max_body_bytes, auth_token=TOKEN), server
    )
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    yield f"127.0.0.1:{port}"
    await server.stop(0)
    pools.close()


@pytest.mark.anyio
async def test_grpc_garbage_and_auth(grpc_target: str) -> None:
    async with grpc.aio.insecure_channel(grpc_target) as ch:
        raw = ch.unary_unary("/serveflow.TaskService/SubmitTask", request_serializer=lambda b: b, response_deserializer=lambda b: b)
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await raw(b"\xff\xfe not a protobuf \x00", metadata=(("authorization", f"Bearer {TOKEN}"),), timeout=5)
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        env = TaskResult.model_validate_json(dict(info.value.trailing_metadata())[ENVELOPE_KEY])
        assert env.error is not None and env.error.code == "invalid_request" and "serveflow.TaskRequest" in env.error.message
        assert "DecodeError" not in (info.value.details() or "")
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await raw(b"", timeout=5)
        assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
    async with AsyncServeflowClient(grpc_target, token=TOKEN) as client:
        assert (await client.submit("echo", {"message": "authed"})).success
    async with AsyncServeflowClient(grpc_target, token="wrong-token-xxxxxxxx") as client:
        res = await client.submit("echo", {"message": "x"})
        assert res.error is not None and res.error.code == "unauthenticated"


@pytest.mark.anyio
async def test_idempotent_tasks_are_resent_when_the_replica_dies(config: AppConfig) -> None:
    calls: list[str] = []

    async def dies_once(pool: str, item: WorkItem) -> TaskResult:
        calls.append(item.task_id)
        if len(calls) == 1:
            raise Unavailable("the replica died")
        return TaskResult(success=True, result="second try")

    board = ReadinessBoard()
    board.update({p: {"ready": True} for p in config.pools})
    plain = await Dispatcher(config, board, dies_once).submit(TaskRequest(task_type="echo"))
    assert plain.error is not None and plain.error.code == "unavailable"
    calls.clear()
    again = await Dispatcher(config, board, dies_once).submit(TaskRequest(task_type="echo", idempotent=True))
    assert again.success and again.result == "second try" and len(calls) == 2 and calls[0] == calls[1]


@pytest.mark.anyio
async def test_load_tool_accounts_for_every_request(grpc_target: str) -> None:
    cfg = LoadConfig(target=grpc_target, protocol="grpc", task_type="echo", count=40, workers=4, token=TOKEN)
    report = await run_load(cfg)
    assert report.sent == 40 and report.ok == 40 and report.lost == 0 and report.hung == 0
    assert report.percentile(50) is not None and report.percentile(99) >= report.percentile(50)  # type: ignore[operator]
    failing = await run_load(LoadConfig(target=grpc_target, protocol="grpc", task_type="fail", count=10, workers=2, token=TOKEN))
    assert failing.structured == {"handler_error": 10} and failing.lost == 0
    hung = await run_load(
        LoadConfig(
            target=grpc_target, protocol="grpc", task_type="sleep", payload={"seconds": 5}, count=2, workers=2,
            request_timeout_s=0.3, token=TOKEN,
        )
    )
    assert hung.hung == 2 and hung.lost == 0
    unreachable = await run_load(LoadConfig(target="127.0.0.1:1", protocol="grpc", count=3, workers=1, request_timeout_s=2))
    assert sum(unreachable.transport.values()) == 3 and unreachable.lost == 0


@pytest.mark.anyio
async def test_continuous_load_stops_by_itself(grpc_target: str) -> None:
    cfg = LoadConfig(target=grpc_target, protocol="grpc", continuous=True, interval_s=0.05, workers=2, duration_s=0.6, token=TOKEN)
    report = await run_load(cfg)
    assert 2 <= report.sent <= 40 and report.elapsed_s < 5 and report.lost == 0


# ------------------------------------------------------------------ fuzzing the HTTP API

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4),
    max_leaves=20,
)
task_like = st.fixed_dictionaries(
    {},
    optional={
        "task_type": st.sampled_from(["echo", "fib", "sleep", "nope", "", "bad type!"]) | st.text(max_size=10),
        "payload": json_values,
        "task_id": json_values,
        "timeout_s": st.one_of(st.floats(allow_nan=False, allow_infinity=False, max_value=0.2), st.text(max_size=5), st.none()),
        "idempotent": json_values,
        "extra": json_values,
    },
)


@pytest.fixture(scope="module")
def fuzz_client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    """The HTTP app with workflows enabled (real engine, SQLite store, in-process handlers)."""
    from tests.unit.conftest import UNIT_ARGS
    from tests.unit.test_workflow_engine import WORKFLOWS

    config = AppConfig.from_args(UNIT_ARGS)
    dispatcher, board, pools = in_process_dispatcher(config)
    store = SqliteRunStore(str(tmp_path_factory.mktemp("fuzz") / "runs.sqlite3"))
    runs = RunService(RunEngine(store, dispatcher.submit, WORKFLOWS, owner="fuzz", lease_s=5))
    with TestClient(build_http_app(Backend(dispatcher, board, _status, runs), max_body_bytes=config.max_body_bytes)) as c:
        yield c
        # Whatever the fuzzing stored, every read still answers.
        for path in ("/v1/runs?limit=1000", "/v1/workflows", "/v1/status", "/openapi.json"):
            assert c.get(path).status_code == 200, path
        for run in c.get("/v1/runs?limit=1000").json()["runs"]:
            assert c.get(f"/v1/runs/{run['run_id']}").status_code == 200
    asyncio.run(store.close())
    pools.close()


def _assert_structured(status: int, text: str) -> None:
    assert "Traceback" not in text and 'File "' not in text and "/site-packages/" not in text
    doc = json.loads(text)
    assert set(doc) >= {"success", "error"}
    if status >= 400:
        assert doc["success"] is False and doc["error"]["code"] != "internal", text
    if status >= 500:
        assert status in (503, 504) and doc["error"]["code"] in ("timeout", "not_ready", "unavailable", "overloaded"), text


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(body=task_like)
def test_fuzz_task_json(fuzz_client: TestClient, body: dict[str, Any]) -> None:
    r = fuzz_client.post("/v1/tasks", json=body)
    _assert_structured(r.status_code, r.text)


run_like = st.fixed_dictionaries(
    {},
    optional={
        "input": json_values,
        "idempotency_key": json_values,
        "wait": st.booleans() | json_values,
        "wait_timeout_s": st.floats(allow_nan=False, allow_infinity=False, min_value=-1, max_value=0.2) | json_values,
        "extra": json_values,
    },
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(body=run_like, workflow=st.sampled_from(["diamond", "fanout", "timeout", "nope", "bad name!"]))
def test_fuzz_run_json(fuzz_client: TestClient, body: dict[str, Any], workflow: str) -> None:
    r = fuzz_client.post(f"/v1/workflows/{workflow}/runs", json=body)
    _assert_structured(r.status_code, r.text)
    assert r.status_code < 500


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(query=st.dictionaries(st.sampled_from(["status", "workflow", "limit", "x"]), st.text(max_size=12), max_size=3))
def test_fuzz_run_listing_query(fuzz_client: TestClient, query: dict[str, str]) -> None:
    r = fuzz_client.get("/v1/runs", params=query)
    assert r.status_code in (200, 422), r.text
    if r.status_code == 422:
        _assert_structured(r.status_code, r.text)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    raw=st.binary(max_size=300),
    path=st.sampled_from(["/v1/tasks", "/v1/workflows/diamond/runs", "/v1/workflows/x/runs", "/v1/runs/x/cancel", "/nowhere"]),
)
def test_fuzz_raw_bytes(fuzz_client: TestClient, raw: bytes, path: str) -> None:
    r = fuzz_client.post(path, content=raw, headers={"content-type": "application/json"})
    _assert_structured(r.status_code, r.text)
    assert r.status_code < 500


@pytest.mark.parametrize(
    "raw",
    [
        b'{"task_type": "echo", "timeout_s": NaN}',
        b'{"task_type": "echo", "timeout_s": Infinity}',
        b'{"task_type": "echo", "payload": {"message": "x", "n": NaN}}',
        b'{"task_type": "fib", "payload": {"n": 1e400}}',
        b'{"task_type": "echo", "payload": {"message": "\\ud800"}}',
        b'{"task_type": "echo", "payload": {"message": "' + b"x" * 10 + b'"}' + b"}" * 3,
        b"\xef\xbb\xbf{}",
    ],
)
def test_json_edge_cases(fuzz_client: TestClient, raw: bytes) -> None:
    for path in ("/v1/tasks", "/v1/workflows/diamond/runs"):
        r = fuzz_client.post(path, content=raw, headers={"content-type": "application/json"})
        _assert_structured(r.status_code, r.text)
        assert r.status_code < 500


@pytest.mark.anyio
async def test_cli_load_prints_a_summary(grpc_target: str) -> None:
    import asyncio
    import io

    from serve_app.client import cli

    out = io.StringIO()
    argv = ["--token", TOKEN, "load", "--protocol", "grpc", "--grpc-target", grpc_target, "--count", "12", "--workers", "3"]
    code = await asyncio.to_thread(cli.run, argv, out=out)
    summary = json.loads(out.getvalue())
    assert code == 0 and summary["sent"] == 12 and summary["ok"] == 12 and summary["lost"] == 0
