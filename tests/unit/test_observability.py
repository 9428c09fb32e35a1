"""Span trees, outcome counters, trace ids on log lines, and the CLI (no Ray)."""

from __future__ import annotations

import io
import json
import logging
from typing import Any, Iterator

import pytest
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from starlette.testclient import TestClient

from serve_app.client import cli
from serve_app.runtime import tracing
from serve_app.runtime.config import AppConfig
from serve_app.runtime.dispatch import Dispatcher
from serve_app.ingress.http import build_http_app
from serve_app.ingress.operations import Backend
from serve_app.runtime.telemetry import TaskStats
from serve_app.testing import in_process_dispatcher
from serve_app.workflow.api import RunService
from serve_app.workflow.engine import RunEngine
from serve_app.workflow.store import MemoryRunStore
from tests.unit.test_workflow_engine import WORKFLOWS

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_ID = "00f067aa0ba902b7"
TRACEPARENT = f"00-{TRACE_ID}-{PARENT_ID}-01"

_exporter = InMemorySpanExporter()
tracing.configure(extra_processor=SimpleSpanProcessor(_exporter))


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    _exporter.clear()
    yield _exporter


@pytest.fixture
def app(config: AppConfig) -> Iterator[tuple[TestClient, TaskStats]]:
    stats = TaskStats()
    _, board, pools = in_process_dispatcher(config)
    dispatcher = Dispatcher(config, board, pools, observer=stats)
    runs = RunService(RunEngine(MemoryRunStore(), dispatcher.submit, WORKFLOWS, owner="o"))

    async def status() -> dict[str, Any]:
        return {"status": "healthy", "tasks": stats.snapshot()}

    with TestClient(build_http_app(Backend(dispatcher, board, status, runs), max_body_bytes=4096)) as c:
        yield c, stats
    pools.close()


def _by_name(exporter: InMemorySpanExporter) -> dict[str, Any]:
    return {s.name: s for s in exporter.get_finished_spans()}


def test_task_span_tree_continues_the_callers_trace(app: tuple[TestClient, TaskStats], spans: InMemorySpanExporter) -> None:
    client, _ = app
    r = client.post("/v1/tasks", json={"task_type": "echo", "payload": {"message": "x"}}, headers={"traceparent": TRACEPARENT})
    assert r.json()["trace_id"] == TRACE_ID
    s = _by_name(spans)
    http, task, handler = s["HTTP POST /v1/tasks"], s["Task:echo"], s["Handler:echo"]
    assert {sp.context.trace_id for sp in (http, task, handler)} == {int(TRACE_ID, 16)}
    assert http.parent.span_id == int(PARENT_ID, 16)
    assert task.parent.span_id == http.context.span_id
    assert handler.parent.span_id == task.context.span_id


def test_errors_are_recorded_on_spans(app: tuple[TestClient, TaskStats], spans: InMemorySpanExporter) -> None:
    client, _ = app
    client.post("/v1/tasks", json={"task_type": "fail"})
    handler = _by_name(spans)["Handler:fail"]
    assert handler.status.status_code.name == "ERROR"
    assert handler.attributes["serveflow.error_code"] == "handler_error"
    assert _by_name(spans)["Task:fail"].attributes["serveflow.error_code"] == "handler_error"


def test_workflow_span_tree(app: tuple[TestClient, TaskStats], spans: InMemorySpanExporter) -> None:
    client, _ = app
    r = client.post("/v1/workflows/diamond/runs", json={"input": {"text": "t", "n": 2}, "wait": True})
    assert r.json()["run"]["status"] == "succeeded"
    finished = spans.get_finished_spans()
    by_id = {sp.context.span_id: sp for sp in finished}
    run = next(sp for sp in finished if sp.name == "Run:diamond")
    step = next(sp for sp in finished if sp.name == "Step:diamond.b")
    task = next(sp for sp in finished if sp.name == "Task:fib")
    handler = next(sp for sp in finished if sp.name == "Handler:fib")
    assert step.parent.span_id == run.context.span_id
    assert task.parent.span_id == step.context.span_id
    assert handler.parent.span_id == task.context.span_id
    assert by_id[run.parent.span_id].name == "HTTP POST /v1/workflows/{name}/runs"


def test_outcome_counters(app: tuple[TestClient, TaskStats]) -> None:
    client, stats = app
    for body in ({"task_type": "echo", "payload": {"message": "a"}}, {"task_type": "fail"}, {"task_type": "nope"}):
        client.post("/v1/tasks", json=body)
    snap = client.get("/v1/status").json()["tasks"]
    assert snap["outcomes"]["echo"] == {"success": 1}
    assert snap["outcomes"]["fail"] == {"handler_error": 1}
    assert snap["outcomes"]["nope"] == {"unknown_task_type": 1}
    assert all(n == 0 for n in snap["inflight"].values())
    assert snap["latency_ms"]["echo"]["count"] == 1


def test_log_lines_carry_the_trace_id(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="serveflow.test"):
        with tracing.start_span("x") as span:
            logging.getLogger("serveflow.test").info("inside")
        logging.getLogger("serveflow.test").info("outside")
    inside, outside = caplog.records[-2:]
    assert inside.getMessage() == f"[trace_id={tracing.trace_id_hex(span)}] inside"
    assert outside.getMessage() == "outside"


def test_json_lines_exporter(tmp_path: Any) -> None:
    exporter = tracing.JsonLinesExporter(str(tmp_path / "spans.jsonl"))
    local = tracing.TracerProvider()
    local.add_span_processor(SimpleSpanProcessor(exporter))
    with local.get_tracer("t").start_as_current_span("outer"):
        with local.get_tracer("t").start_as_current_span("inner"):
            pass
    lines = [json.loads(line) for line in (tmp_path / "spans.jsonl").read_text().splitlines()]
    inner, outer = lines
    assert inner["name"] == "inner" and inner["parent_id"] == outer["span_id"] and outer["parent_id"] is None


def test_unknown_exporter_rejected() -> None:
    with pytest.raises(ValueError, match="unknown trace exporter"):
        tracing._processor_for("zipkin")


# ------------------------------------------------------------------ CLI

STATUS_DOC = {
    "status": "degraded",
    "components": {
        "Coordinator": {"status": "healthy", "since": 100.0, "error": None},
        "MetricsCollector": {"status": "degraded", "since": 40.0, "error": "Ray state API unavailable"},
    },
    "pools": {"general": {"status": "healthy", "since": 90.0, "deployment": "HandlerWorker_general", "error": None}},
    "deployments": {"HandlerWorker_general": {"replica_states": {"RUNNING": 2}}, "Coordinator": {"replica_states": {"RUNNING": 1}}},
}


def test_render_status_table() -> None:
    text = cli.render_status(STATUS_DOC, url="http://x", now=160.0)
    lines = text.splitlines()
    assert lines[0] == "serveflow at http://x: degraded"
    assert lines[1].split() == ["COMPONENT", "KIND", "STATUS", "REPLICAS", "SINCE", "ERROR"]
    general = next(line for line in lines if line.startswith("general"))
    assert "pool" in general and "2 running" in general and "1m ago" in general
    assert "Ray state API unavailable" in text


@pytest.mark.parametrize("state, code", [("healthy", 0), ("degraded", 1), ("unhealthy", 2), ("initializing", 2)])
def test_status_exit_codes(state: str, code: int) -> None:
    assert cli.status_exit_code({"status": state}) == code


def _cli(app: TestClient, *argv: str) -> tuple[int, str]:
    out = io.StringIO()
    code = cli.run(["--url", "http://testserver", *argv], client_factory=lambda url, timeout: app, out=out)
    return code, out.getvalue()


def test_cli_commands(app: tuple[TestClient, TaskStats]) -> None:
    client, _ = app
    code, out = _cli(client, "submit", "echo", "--payload", '{"message": "cli"}')
    assert code == 0 and json.loads(out)["result"] == {"message": "cli"}
    code, out = _cli(client, "submit", "fail")
    assert code == 1 and json.loads(out)["error"]["code"] == "handler_error"
    code, out = _cli(client, "run-workflow", "diamond", "--input", '{"text": "c", "n": 4}', "--wait")
    run = json.loads(out)["run"]
    assert code == 0 and run["status"] == "succeeded"
    code, out = _cli(client, "get-run", run["run_id"])
    assert code == 0 and json.loads(out)["run"]["output"] == {"fib": 3, "echo": "c"}
    code, out = _cli(client, "list-runs", "--workflow", "diamond")
    assert code == 0 and len(json.loads(out)["runs"]) == 1
    code, out = _cli(client, "status")
    assert code == 0 and out.startswith("serveflow at http://testserver: healthy")
    with pytest.raises(SystemExit, match="not valid JSON"):
        _cli(client, "submit", "echo", "--payload", "{nope")


def test_cli_unreachable_is_exit_2() -> None:
    out = io.StringIO()
    code = cli.run(["--url", "http://127.0.0.1:1", "--timeout", "2", "status"], out=out)
    assert code == 2 and "unreachable" in out.getvalue()


def test_with_nothing_to_export_spans_are_ids_only(monkeypatch: pytest.MonkeyPatch, spans: InMemorySpanExporter) -> None:
    """Exporter none: the trace id continues the caller's, each span has its own id, the context
    reaches the worker, errors still propagate, and nothing is recorded."""
    monkeypatch.setattr(tracing, "_recording", False)
    with tracing.start_span("outer", carrier={"traceparent": TRACEPARENT}) as outer:
        assert tracing.trace_id_hex() == TRACE_ID and not outer.is_recording()
        carried = tracing.inject()
        assert carried["traceparent"].startswith(f"00-{TRACE_ID}-") and PARENT_ID not in carried["traceparent"]
        with tracing.start_span("inner", carrier=carried) as inner:
            assert inner.get_span_context().trace_id == int(TRACE_ID, 16)
            assert inner.get_span_context().span_id != outer.get_span_context().span_id
    with tracing.start_span("root") as root:
        assert root.get_span_context().is_valid and tracing.trace_id_hex(root) != TRACE_ID
    with pytest.raises(ValueError), tracing.start_span("failing"):
        raise ValueError("propagates")
    assert tracing.trace_id_hex() is None  # nothing left current
    assert spans.get_finished_spans() == ()


@pytest.mark.parametrize("recording", [False, True])
def test_a_carrier_without_trace_fields_starts_a_new_trace(
    monkeypatch: pytest.MonkeyPatch, spans: InMemorySpanExporter, recording: bool
) -> None:
    """Request headers with no traceparent (most clients) are not parsed: they start a new
    trace, not a child of whatever span is current, exactly as an empty extraction did."""
    monkeypatch.setattr(tracing, "_recording", recording)
    with tracing.start_span("outer", carrier={"traceparent": TRACEPARENT}):
        with tracing.start_span("request", carrier={"host": "x", "content-type": "application/json"}) as span:
            assert span.get_span_context().is_valid and tracing.trace_id_hex(span) != TRACE_ID
        with tracing.start_span("baggage only", carrier={"baggage": "k=v"}) as span:
            assert tracing.trace_id_hex(span) != TRACE_ID  # parsed (a field it reads), still no parent
        with tracing.start_span("continued", carrier={"TraceParent": "x", "traceparent": TRACEPARENT}) as span:
            assert tracing.trace_id_hex(span) == TRACE_ID

