from __future__ import annotations

import asyncio
import threading
from typing import Any

import pytest

from serve_app.runtime.handlers import HandlerRegistry, handler
from serve_app.core.models import WorkItem
from serve_app.runtime.runner import HandlerRunner

pytestmark = pytest.mark.anyio


def _runner(modules: list[str], types: list[str], **kw: Any) -> HandlerRunner:
    kw.setdefault("max_concurrency", 4)
    kw.setdefault("max_stuck_calls", 1)
    return HandlerRunner(HandlerRegistry.from_modules(modules, types), **kw)


def _item(task_type: str, payload: dict[str, Any], timeout_s: float = 5.0) -> WorkItem:
    return WorkItem(task_id="t-1", task_type=task_type, payload=payload, timeout_s=timeout_s)


async def test_sync_and_async_success() -> None:
    r = _runner(["serve_app.examples.basic"], ["echo", "sleep"])
    ok = await r.run(_item("echo", {"message": "hi"}))
    assert ok.success and ok.result == {"message": "hi"} and ok.error is None
    slept = await r.run(_item("sleep", {"seconds": 0.01}))
    assert slept.result == {"slept": 0.01}
    assert r.completed == 2


async def test_validation_error_has_location_but_not_input() -> None:
    r = _runner(["serve_app.examples.basic"], ["echo"])
    res = await r.run(_item("echo", {"message": 12345}))
    assert not res.success and res.error is not None
    assert res.error.code == "validation_error"
    (e,) = res.error.details["errors"]
    assert e["loc"] == ["message"] and "input" not in e


async def test_handler_exception_is_structured_without_traceback() -> None:
    r = _runner(["serve_app.examples.basic"], ["fail"])
    res = await r.run(_item("fail", {"message": "boom"}))
    assert res.error is not None
    assert res.error.code == "handler_error" and not res.error.retryable
    assert "boom" in res.error.message and "Traceback" not in res.error.message


async def test_error_hook_marks_retryable() -> None:
    r = _runner(["serve_app.examples.basic"], ["fail"])
    res = await r.run(_item("fail", {"retryable": True}))
    assert res.error is not None and res.error.retryable and res.error.details == {"hook": "fail"}


async def test_async_timeout() -> None:
    r = _runner(["serve_app.examples.basic"], ["sleep"])
    res = await r.run(_item("sleep", {"seconds": 5}, timeout_s=0.05))
    assert res.error is not None and res.error.code == "timeout" and res.error.retryable
    assert r.stuck_calls == 0  # coroutines are cancelled, nothing left behind


async def test_stuck_sync_call_makes_runner_unhealthy_until_it_returns() -> None:
    release = threading.Event()

    @handler("block")
    def block(payload: dict) -> str:
        release.wait(10)
        return "done"

    r = HandlerRunner(HandlerRegistry({"block": block.__serveflow_handler__}), max_concurrency=2, max_stuck_calls=1)  # type: ignore[attr-defined]
    res = await r.run(_item("block", {}, timeout_s=0.05))
    assert res.error is not None and res.error.code == "timeout"
    assert r.stuck_calls == 1
    assert "past their deadline" in (r.health_problem() or "")
    release.set()
    for _ in range(100):
        if r.stuck_calls == 0:
            break
        await asyncio.sleep(0.01)
    assert r.stuck_calls == 0 and r.health_problem() is None
    r.close()


async def test_non_json_result_is_a_handler_error() -> None:
    @handler("weird")
    def weird(payload: dict) -> object:
        return object()

    r = HandlerRunner(HandlerRegistry({"weird": weird.__serveflow_handler__}), max_concurrency=1, max_stuck_calls=1)  # type: ignore[attr-defined]
    res = await r.run(_item("weird", {}))
    assert res.error is not None and "not JSON-serializable" in res.error.message


async def test_unknown_type_in_pool() -> None:
    r = _runner(["serve_app.examples.basic"], ["echo"])
    res = await r.run(_item("fib", {}))
    assert res.error is not None and res.error.code == "unknown_task_type"


async def test_failures_do_not_affect_concurrent_calls() -> None:
    r = _runner(["serve_app.examples.basic"], ["echo", "fail"])
    results = await asyncio.gather(
        *[r.run(_item("fail" if i % 2 else "echo", {"message": str(i)})) for i in range(20)]
    )
    assert [res.success for res in results] == [i % 2 == 0 for i in range(20)]
