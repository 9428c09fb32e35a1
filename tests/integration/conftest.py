"""One real Ray cluster + Serve instance per test session, reached over real HTTP."""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from typing import Any, Callable, Iterator

import httpx
import pytest

from serve_app.core.connect import connect, disconnect
from serve_app.testing import free_port, haproxy_host_env

POOLS: dict[str, Any] = {
    "general": {
        "handler_modules": ["serve_app.examples.basic", "serve_app.examples.faults"],
        "task_types": ["echo", "noop", "sleep", "fail", "record"],
        "max_ongoing_requests": 32,
    },
    "compute": {
        "handler_modules": ["serve_app.examples.compute"],
        "task_types": ["fib", "count_primes", "make_blob", "blob_stats"],
    },
    "fragile": {
        "handler_modules": ["serve_app.examples.faults"],
        "task_types": ["hang", "crash", "whoami", "stall", "flaky", "block_loop"],
        "max_stuck_calls": 1,
        "max_ongoing_requests": 2,
        "max_queued_requests": 2,
    },
    # Serve's autoscaling down to zero: no replica until the first request.
    "cold": {
        "handler_modules": ["serve_app.examples.model"],
        "task_types": ["tokenize"],
        "settings": {"vocabulary": ["hello", "world"]},
        "autoscaling_config": {"min_replicas": 0, "max_replicas": 1, "initial_replicas": 0, "downscale_delay_s": 600},
    },
}
GRPC_SERVICER = "serve_app.ingress.servicer.add_TaskServiceServicer_to_server"
WORKFLOWS: list[dict[str, Any]] = [
    {
        "name": "diamond",
        "input_schema": {
            "type": "object",
            "required": ["text", "n"],
            "properties": {"text": {"type": "string"}, "n": {"type": "integer", "minimum": 0, "maximum": 90}},
        },
        "steps": [
            {"name": "a", "task_type": "echo", "input": {"message": "${input.text}"}},
            {"name": "b", "task_type": "fib", "input": {"n": "${input.n}"}, "depends_on": ["a"]},
            {"name": "c", "task_type": "echo", "input": {"message": "${steps.a.result.message}"}},
            {"name": "d", "task_type": "echo", "input": {"message": "${steps.c.result.message}"}, "depends_on": ["b"]},
        ],
        "output": {"fib": "${steps.b.result.value}", "echo": "${steps.d.result.message}"},
    },
    {
        "name": "fanout",
        "steps": [{"name": f"s{i}", "task_type": "sleep", "input": {"seconds": "${input.seconds}"}} for i in range(8)]
        + [{"name": "join", "task_type": "echo", "input": {"message": "joined"}, "depends_on": [f"s{i}" for i in range(8)]}],
    },
    {
        "name": "retrying",
        "steps": [
            {
                "name": "flaky",
                "task_type": "flaky",
                "input": {"key": "${input.key}", "fail_times": "${input.fail_times}"},
                "retry": {"max_attempts": 3, "initial_backoff_s": 0.05},
            },
            {"name": "after", "task_type": "echo", "input": {"message": "ok"}, "depends_on": ["flaky"]},
        ],
    },
    {"name": "timeout", "steps": [{"name": "slow", "task_type": "sleep", "input": {"seconds": 10}, "timeout_s": 0.3}]},
    {
        "name": "long",
        "steps": [
            {"name": "first", "task_type": "sleep", "input": {"seconds": 60}},
            {"name": "second", "task_type": "echo", "input": {"message": "never"}, "depends_on": ["first"]},
        ],
    },
    {
        "name": "resumable",
        "steps": [
            {"name": "one", "task_type": "echo", "input": {"message": "first"}},
            {"name": "two", "task_type": "sleep", "input": {"seconds": "${input.seconds}"}, "depends_on": ["one"]},
            {"name": "three", "task_type": "echo", "input": {"message": "${steps.one.result.message}"}, "depends_on": ["two"]},
        ],
    },
]
WORKFLOWS.append(
    {
        "name": "branchy",
        "input_schema": {"type": "object", "required": ["tier"], "properties": {"tier": {"type": "string"}}},
        "steps": [
            {"name": "check", "task_type": "echo", "input": {"message": "${input.tier}"}},
            {"name": "vip", "task_type": "echo", "input": {"message": "vip"}, "when": "steps.check.result.message == 'gold'"},
            {"name": "thanks", "task_type": "echo", "input": {"message": "${steps.vip.result.message}"}},
            {"name": "big", "task_type": "fib", "input": {"n": 10}, "when": "input.amount > `100`"},
        ],
    }
)
# Dynamic workflows: maps, child runs, concurrency keys (tests/integration/test_dynamic_workflows.py).
WORKFLOWS += [
    {
        "name": "region",
        "input_schema": {"type": "object", "required": ["region"], "properties": {"region": {"type": "string"}}},
        "steps": [
            {"name": "hello", "task_type": "echo", "input": {"message": "${input.region}"}},
        ],
        "output": {"region": "${steps.hello.result.message}"},
    },
    {
        "name": "regions",
        "steps": [
            {
                "name": "per_region",
                "workflow": "region",
                "map": {"over": "${input.regions}", "max_parallel": 3},
                "input": {"region": "${item}"},
            },
            {"name": "summary", "task_type": "echo", "input": {"message": "${input.label}"}},
        ],
        "output": {"regions": "${steps.per_region.result}", "label": "${steps.summary.result.message}"},
    },
    {
        "name": "scores",
        "steps": [
            {"name": "rows", "task_type": "echo", "input": {"message": "${input.label}"}},
            {
                "name": "score",
                "task_type": "fib",
                "map": {"over": "${input.rows}", "max_parallel": 8, "on_item_failure": "continue"},
                "input": {"n": "${item.n}"},
                "depends_on": ["rows"],
            },
        ],
    },
    {
        "name": "bulk",
        "steps": [
            {
                "name": "each",
                "task_type": "record",
                "map": {"over": "${input.items}", "max_parallel": 4},
                "input": {"path": "${input.path}", "key": "${input.key}", "step": "${item.id}", "seconds": "${item.seconds}"},
            }
        ],
    },
    {
        "name": "slow_child",
        "steps": [
            {"name": "first", "task_type": "record", "input": {"path": "${input.path}", "key": "${input.key}", "step": "first"}},
            {
                "name": "second",
                "task_type": "record",
                "input": {"path": "${input.path}", "key": "${input.key}", "step": "second", "seconds": "${input.seconds}"},
                "depends_on": ["first"],
            },
        ],
        "output": {"done": "${steps.second.result.key}"},
    },
    {
        "name": "parent",
        "steps": [
            {"name": "child", "workflow": "slow_child", "input": {"path": "${input.path}", "key": "${input.key}", "seconds": "${input.seconds}"}},
            {"name": "after", "task_type": "echo", "input": {"message": "${steps.child.result.done}"}},
        ],
    },
    {
        "name": "billing",
        "concurrency": {"key": "${input.customer}", "max_runs": 1},
        "steps": [{"name": "bill", "task_type": "sleep", "input": {"seconds": "${input.seconds}"}}],
    },
]
# Durable waits (tests/integration/test_waits.py).
WORKFLOWS += [
    {
        "name": "nap",
        "steps": [
            {"name": "nap", "sleep": "${input.seconds}"},
            {"name": "after", "task_type": "echo", "input": {"message": "awake"}, "depends_on": ["nap"]},
        ],
    },
    {
        "name": "approval",
        "steps": [
            {"name": "ask", "task_type": "echo", "input": {"message": "${input.what}"}},
            {"name": "approve", "wait_for": {"signal": "approved", "timeout": "1h"}, "depends_on": ["ask"]},
            {"name": "after", "task_type": "echo", "input": {"message": "${steps.approve.result.by}"}},
        ],
    },
]
WORKFLOWS += [
    {
        "name": "big_result",  # results by reference: bytes made in one step, read whole by the next
        "steps": [
            {"name": "make", "task_type": "make_blob", "input": {"size": "${input.size}"}},
            {"name": "pause", "task_type": "sleep", "input": {"seconds": "${input.pause}"}, "depends_on": ["make"]},
            {"name": "stats", "task_type": "blob_stats", "input": {"data": "${steps.make.result}"}, "depends_on": ["pause"]},
        ],
    },
]
WORKFLOWS.append(
    {
        "name": "big_inline",  # a condition reads make's result, so it stays inline: MBs to the next worker
        "steps": [
            {"name": "make", "task_type": "make_blob", "input": {"size": "${input.size}", "text": True}},
            {
                "name": "stats",
                "task_type": "blob_stats",
                "input": {"data": "${steps.make.result}"},
                "when": "steps.make.result != ''",
            },
        ],
        # A path into stats' result: nothing here goes by reference, so every call takes the
        # cluster's transport (gRPC in the default profile).
        "output": {"bytes": "${steps.stats.result.bytes}", "adler32": "${steps.stats.result.adler32}"},
    }
)
WORKFLOWS.append({"name": "tick", "steps": [{"name": "hello", "task_type": "echo", "input": {"message": "${input.note}"}}]})
WORKFLOWS.append(
    {
        "name": "on_order",
        "input_schema": {
            "type": "object",
            "properties": {"payload": {"type": "object", "required": ["amount"], "properties": {"amount": {"type": "integer"}}}},
        },
        "steps": [{"name": "book", "task_type": "echo", "input": {"message": "${input.id}"}}],
    }
)
# Events (tests/integration/test_events.py): orders start runs; pings go to a task type.
SUBSCRIPTIONS = [
    {"name": "orders", "types": ["order.placed"], "workflow": "on_order", "max_attempts": 3, "backoff_s": 0.2},
    {"name": "pings", "types": ["ping"], "task_type": "echo", "max_attempts": 2, "backoff_s": 0.2},
]
# A schedule that fires during the whole session (tests/integration/test_schedules.py).
SCHEDULES = [
    {"name": "ticker", "workflow": "tick", "cron": "*/3 * * * * *", "input": {"note": "tick"}, "overlap": "allow", "catch_up": "last"}
]
APP_ARGS: dict[str, Any] = {"pools": POOLS, "max_body_bytes": 65536, "probe_interval_s": 0.5}


def wait_until(predicate: Callable[[], Any], timeout_s: float, interval_s: float = 0.25, what: str = "condition") -> Any:
    """Poll ``predicate`` until it returns something truthy (bounded; never hangs a test)."""
    deadline = time.monotonic() + timeout_s
    last_exc: Exception | None = None
    while time.monotonic() < deadline:
        try:
            value = predicate()
            if value:
                return value
        except Exception as exc:  # transport errors while things restart
            last_exc = exc
        time.sleep(interval_s)
    raise AssertionError(f"timed out after {timeout_s}s waiting for {what} (last error: {last_exc!r})")


@pytest.fixture(scope="session")
def serve_instance(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    from ray import serve

    from graphs.serveflow import build_app

    http_port, grpc_port, metrics_port = free_port(), free_port(), free_port()
    # An ObjectRef pickled out of band (outside Ray's own serialization, e.g. by Serve's gRPC
    # transport) is pinned for the life of its process: a leak. Here it is an error instead.
    os.environ["RAY_allow_out_of_band_object_ref_serialization"] = "0"
    # HAProxy's files and ports of this cluster's own (the multi-node test starts a second cluster
    # on this host, and a `serve run` of the README may be up too); Serve ignores them without it.
    # A short path: HAProxy's socket paths (here/<node id>/admin.sock) have a limit of 97 bytes.
    haproxy_dir = tempfile.mkdtemp(prefix="sfh-")
    os.environ.update(haproxy_host_env(haproxy_dir, http_ports=range(34000, 35000), grpc_ports=range(44000, 45000)))
    # Logical CPUs: replicas ask for fractions; this is a scheduling budget, not real cores.
    connect(
        address="local",
        num_cpus=8,
        include_dashboard=False,
        namespace="serveflow-tests",
        log_to_driver=False,
        _metrics_export_port=metrics_port,
    )
    serve.start(
        http_options={"host": "127.0.0.1", "port": http_port},
        grpc_options={"port": grpc_port, "grpc_servicer_functions": [GRPC_SERVICER]},
    )
    store_path = str(tmp_path_factory.mktemp("store") / "runs.sqlite3")
    spans_path = str(tmp_path_factory.mktemp("traces") / "spans.jsonl")
    args = {
        **APP_ARGS,
        "workflows": {
            "store_path": store_path,
            "lease_s": 3,
            "definitions": WORKFLOWS,
            "schedules": SCHEDULES,
            "subscriptions": SUBSCRIPTIONS,
        },
        "tracing": {"exporter": f"file:{spans_path}"},
    }
    serve.run(build_app(args), name="serveflow", route_prefix="/")
    info = {
        "http": f"http://127.0.0.1:{http_port}",
        "grpc": f"127.0.0.1:{grpc_port}",
        "store_path": store_path,
        "spans_path": spans_path,
        "metrics": f"http://127.0.0.1:{metrics_port}/metrics",
        "args": args,
        "http_options": {"host": "127.0.0.1", "port": http_port},
        "grpc_options": {"port": grpc_port, "grpc_servicer_functions": [GRPC_SERVICER]},
    }
    with httpx.Client(base_url=info["http"], timeout=10) as c:
        wait_until(lambda: c.get("/readyz").status_code == 200, 60, what="serveflow /readyz")
    try:
        yield info
    finally:
        serve.shutdown()
        disconnect()
        shutil.rmtree(haproxy_dir, ignore_errors=True)


@pytest.fixture
def http(serve_instance: dict[str, Any]) -> Iterator[httpx.Client]:
    """A client for the session app, once every pool is ready again (earlier tests kill replicas)."""
    with httpx.Client(base_url=serve_instance["http"], timeout=60) as c:
        wait_until(lambda: c.get("/readyz").status_code == 200, 120, what="all pools ready")
        yield c


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "integration" in str(item.fspath):
            item.add_marker(pytest.mark.integration)

