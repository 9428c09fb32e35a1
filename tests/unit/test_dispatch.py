from __future__ import annotations

import asyncio

import pytest

from serve_app.runtime.config import AppConfig
from serve_app.runtime.dispatch import Dispatcher, ReadinessBoard
from serve_app.core.errors import Unavailable
from serve_app.core.models import TaskRequest, TaskResult, WorkItem

pytestmark = pytest.mark.anyio


def _ready_board(config: AppConfig) -> ReadinessBoard:
    board = ReadinessBoard()
    board.update({p: {"ready": True, "status": "healthy"} for p in config.pools})
    return board


async def test_coordinator_guard_times_out_a_silent_pool(config: AppConfig) -> None:
    async def silent(pool: str, item: WorkItem) -> TaskResult:
        await asyncio.sleep(60)
        raise AssertionError

    d = Dispatcher(config, _ready_board(config), silent)
    res = await d.submit(TaskRequest(task_type="echo", timeout_s=0.1))
    assert res.error is not None and res.error.code == "timeout" and res.error.details["pool"] == "general"
    assert res.duration_ms < 5000


async def test_transport_errors_keep_their_code(config: AppConfig) -> None:
    async def dead(pool: str, item: WorkItem) -> TaskResult:
        raise Unavailable("the replica died")

    res = await Dispatcher(config, _ready_board(config), dead).submit(TaskRequest(task_type="echo"))
    assert res.error is not None and res.error.code == "unavailable" and res.error.retryable


async def test_deadline_defaults_and_caps(config: AppConfig) -> None:
    seen: list[float] = []

    async def record(pool: str, item: WorkItem) -> TaskResult:
        seen.append(item.timeout_s)
        assert item.trace_context.get("traceparent")
        return TaskResult(success=True, result=1)

    d = Dispatcher(config, _ready_board(config), record)
    await d.submit(TaskRequest(task_type="echo"))
    await d.submit(TaskRequest(task_type="echo", timeout_s=3000))
    assert seen == [30.0, config.max_timeout_s]


async def test_generated_task_ids_are_unique(config: AppConfig) -> None:
    async def ok(pool: str, item: WorkItem) -> TaskResult:
        return TaskResult(success=True)

    d = Dispatcher(config, _ready_board(config), ok)
    ids = {(await d.submit(TaskRequest(task_type="echo"))).task_id for _ in range(50)}
    assert len(ids) == 50
