"""The incremental scheduler and the priority gate: pure, no Ray, no store."""

from __future__ import annotations

import asyncio

import pytest

from serve_app.workflow.gate import PriorityGate
from serve_app.workflow.scheduler import Scheduler
from serve_app.workflow.state import StepStatus

P, R, S, F, K = StepStatus.PENDING, StepStatus.RUNNING, StepStatus.SUCCEEDED, StepStatus.FAILED, StepStatus.SKIPPED


def make(deps: dict[str, list[str]], statuses: dict[str, StepStatus] | None = None) -> Scheduler:
    statuses = {n: (statuses or {}).get(n, P) for n in deps}
    return Scheduler(list(deps), {n: set(d) for n, d in deps.items()}, statuses)


def test_diamond_in_order() -> None:
    s = make({"a": [], "b": ["a"], "c": ["a"], "d": ["b", "c"]})
    assert s.start().ready == ["a"]
    assert s.finished("a", S).ready == ["b", "c"]
    assert s.finished("c", S).ready == []
    assert s.finished("b", S).ready == ["d"]
    assert s.finished("d", S).ready == []


def test_failure_skips_every_dependant_transitively_but_not_other_branches() -> None:
    s = make({"a": [], "b": ["a"], "c": ["b"], "x": []})
    assert s.start().ready == ["a", "x"]
    changes = s.finished("a", F)
    assert changes.skipped == ["b", "c"] and changes.ready == []
    assert s.finished("x", S).ready == []


def test_resume_runs_in_flight_steps_again_and_skips_what_is_blocked() -> None:
    s = make(
        {"a": [], "b": ["a"], "c": ["a"], "d": ["c"], "e": ["b"]},
        {"a": S, "b": R, "c": K},
    )
    changes = s.start()
    assert changes.ready == ["b"]  # in flight when the previous owner stopped
    assert changes.skipped == ["d"]  # c was skipped before the restart
    assert s.finished("b", S).ready == ["e"]


def test_work_per_completion_does_not_grow_with_the_dag() -> None:
    """A join over n steps: each completion touches one counter, the join is ready exactly once."""
    n = 4096
    deps = {f"s{i}": [] for i in range(n)} | {"join": [f"s{i}" for i in range(n)]}
    s = make(deps)
    assert len(s.start().ready) == n
    readies = [s.finished(f"s{i}", S).ready for i in range(n)]
    assert readies[:-1] == [[]] * (n - 1) and readies[-1] == ["join"]
    chain = {f"c{i}": ([f"c{i - 1}"] if i else []) for i in range(1000)}
    c = make(chain)
    assert c.start().ready == ["c0"]
    for i in range(999):
        assert c.finished(f"c{i}", S).ready == [f"c{i + 1}"]


@pytest.mark.anyio
async def test_gate_orders_waiters_by_priority_then_arrival() -> None:
    gate = PriorityGate(1)
    order: list[str] = []
    release = asyncio.Event()

    async def hold() -> None:
        async with gate.slot(1):
            await release.wait()

    async def take(name: str, priority: int) -> None:
        async with gate.slot(priority):
            order.append(name)

    holder = asyncio.ensure_future(hold())
    await asyncio.sleep(0)
    waiters = [asyncio.ensure_future(take(n, p)) for n, p in [("low1", 1), ("high", 3), ("low2", 1), ("mid", 2)]]
    await asyncio.sleep(0)
    assert gate.waiting == 4 and gate.in_use == 1
    release.set()
    await asyncio.gather(holder, *waiters)
    assert order == ["high", "mid", "low1", "low2"]
    assert gate.in_use == 0 and gate.waiting == 0


@pytest.mark.anyio
async def test_gate_a_cancelled_waiter_leaves_the_line_and_loses_no_slot() -> None:
    gate = PriorityGate(1)
    async with gate.slot(1):
        waiter = asyncio.ensure_future(gate._acquire(3))
        await asyncio.sleep(0)
        waiter.cancel()
        await asyncio.gather(waiter, return_exceptions=True)
    assert gate.in_use == 0
    async with gate.slot(1):  # the slot came back
        assert gate.in_use == 1
