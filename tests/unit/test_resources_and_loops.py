from __future__ import annotations

import asyncio

import pytest

from serve_app.runtime.loops import PeriodicTask
from serve_app.runtime.resources import Backoff, cluster_snapshot, local_snapshot


def test_local_snapshot_measures_this_machine() -> None:
    snap = local_snapshot()
    assert snap["source"] == "local"
    assert snap["node"]["cpu_count"] >= 1 and snap["node"]["memory_total_bytes"] > 0


def test_cluster_snapshot_shapes() -> None:
    snap = cluster_snapshot(
        {"CPU": 4.0, "memory": 10.0}, {"CPU": 3.5}, [{"node_id": "n1", "state": "ALIVE", "is_head_node": True}]
    )
    assert snap["resources"]["CPU"] == {"total": 4.0, "available": 3.5}
    assert snap["resources"]["memory"]["available"] == 0.0
    assert snap["nodes"][0]["is_head"] is True


def test_backoff_doubles_and_resets() -> None:
    now = [0.0]
    b = Backoff(initial_s=1, max_s=5, clock=lambda: now[0])
    assert b.due()
    assert [b.failed() for _ in range(5)] == [1, 2, 4, 5, 5]
    assert not b.due()
    now[0] = 100
    assert b.due()
    b.succeeded()
    assert b.failures == 0 and b.failed() == 1


@pytest.mark.anyio
async def test_periodic_task_survives_errors_and_reports_exit() -> None:
    calls = []

    async def step() -> None:
        calls.append(1)
        if len(calls) == 1:
            raise ValueError("transient")

    loop = PeriodicTask("t", step, 0.01, stall_after_s=5)
    assert loop.problem() == "t loop not started"
    loop.start()
    await asyncio.sleep(0.1)
    assert len(calls) > 2 and loop.problem() is None and loop.last_error is None
    await loop.stop()
    assert loop.problem() == "t loop exited"
