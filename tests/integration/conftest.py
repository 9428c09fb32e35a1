"""One real Ray cluster + Serve instance per test session, reached over real HTTP."""

from __future__ import annotations

import socket
import time
from typing import Any, Callable, Iterator

import httpx
import pytest

from serve_app.connect import connect, disconnect

POOLS: dict[str, Any] = {
    "general": {
        "handler_modules": ["serve_app.examples.basic"],
        "task_types": ["echo", "noop", "sleep", "fail"],
        "max_ongoing_requests": 32,
    },
    "compute": {"handler_modules": ["serve_app.examples.compute"], "task_types": ["fib", "count_primes"]},
    "fragile": {
        "handler_modules": ["serve_app.examples.faults"],
        "task_types": ["hang", "crash", "whoami", "stall"],
        "max_stuck_calls": 1,
        "max_ongoing_requests": 2,
        "max_queued_requests": 2,
    },
}
GRPC_SERVICER = "serve_app.proto.serveflow_pb2_grpc.add_TaskServiceServicer_to_server"
APP_ARGS: dict[str, Any] = {"pools": POOLS, "max_body_bytes": 65536, "probe_interval_s": 0.5}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


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
def serve_instance() -> Iterator[dict[str, Any]]:
    from ray import serve

    from graphs.serveflow import build_app

    http_port, grpc_port = free_port(), free_port()
    # Logical CPUs: replicas ask for fractions; this is a scheduling budget, not real cores.
    connect(address="local", num_cpus=8, include_dashboard=False, namespace="serveflow-tests", log_to_driver=False)
    serve.start(
        http_options={"host": "127.0.0.1", "port": http_port},
        grpc_options={"port": grpc_port, "grpc_servicer_functions": [GRPC_SERVICER]},
    )
    serve.run(build_app(APP_ARGS), name="serveflow", route_prefix="/")
    info = {"http": f"http://127.0.0.1:{http_port}", "grpc": f"127.0.0.1:{grpc_port}"}
    with httpx.Client(base_url=info["http"], timeout=10) as c:
        wait_until(lambda: c.get("/readyz").status_code == 200, 60, what="serveflow /readyz")
    try:
        yield info
    finally:
        serve.shutdown()
        disconnect()


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

