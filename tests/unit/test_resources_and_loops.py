from __future__ import annotations

import asyncio

import pytest

from serve_app.runtime.loops import PeriodicTask
from serve_app.core.retry import Backoff, RetryClock
from serve_app.runtime.resources import cluster_snapshot, local_snapshot


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
    b = RetryClock(Backoff(initial_s=1, max_s=5), clock=lambda: now[0])
    assert b.due()
    assert [b.failed() for _ in range(5)] == [1, 2, 4, 5, 5]
    assert not b.due()
    now[0] = 100
    assert b.due()
    b.succeeded()
    assert b.failures == 0 and b.failed() == 1


def test_one_backoff_formula_with_jitter_floor_and_cap() -> None:
    plain = Backoff(initial_s=0.1, max_s=0.3)
    assert [plain.delay(a) for a in (1, 2, 3, 4)] == [0.1, 0.2, 0.3, 0.3]
    assert plain.delay(10**6) == 0.3  # no overflow for absurd attempt counts
    jittered = Backoff(initial_s=1, max_s=4, jitter=True)
    assert jittered.delay(3, rand=lambda: 0.5) == 2.0
    assert jittered.delay(3, rand=lambda: 0.0, floor_s=1.5) == 1.5  # e.g. the server's Retry-After
    assert jittered.delay(1, rand=lambda: 0.0, floor_s=99) == 4  # a floor never exceeds the cap


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


@pytest.mark.anyio
async def test_periodic_task_hurries_only_while_asked() -> None:
    ticks: list[float] = []
    hurrying = True

    async def step() -> None:
        ticks.append(asyncio.get_running_loop().time())

    loop = PeriodicTask("t", step, 10.0, stall_after_s=30, hurry=lambda: hurrying, hurry_interval_s=0.02)
    loop.start()
    await asyncio.sleep(0.2)
    fast = len(ticks)
    assert fast >= 4  # every 0.02 s, not every 10 s
    hurrying = False
    await asyncio.sleep(0.2)
    # At most the one step already scheduled on the short interval, then the long one.
    assert len(ticks) <= fast + 1
    await loop.stop()
