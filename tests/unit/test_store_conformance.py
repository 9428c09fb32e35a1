"""One conformance suite for every run store backend: memory, SQLite and a real Postgres.

The engine tests (test_workflow_engine.py, test_leases_and_engine_defects.py)
also run over all three; this file pins the store contract itself.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from serve_app.core.errors import Conflict, Unavailable
from serve_app.workflow.state import RunState, RunStatus, StepState, StepStatus
from serve_app.workflow.store import Lease, LeaseLost
from serve_app.workflow.migrations import POSTGRES_MIGRATIONS
from tests.conftest import STORE_KINDS, StoreFactory

pytestmark = pytest.mark.anyio
SPEC = '{"name": "w", "steps": [{"name": "a", "task_type": "echo"}]}'


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def new_run(run_id: str, *, key: str | None = None, created_at: float = 1.0, workflow: str = "w", **inp: Any) -> RunState:
    return RunState(
        run_id=run_id,
        workflow=workflow,
        input=dict(inp),
        idempotency_key=key,
        created_at=created_at,
        steps=[StepState(name="a", task_type="echo"), StepState(name="b", task_type="echo")],
    )


@pytest.fixture(params=STORE_KINDS)
def kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


async def test_create_get_list_and_steps_in_order(kind: str, store_factory: StoreFactory) -> None:
    store = await store_factory(kind)
    for i in range(3):
        run, created = await store.create_run(new_run(f"r{i}", created_at=float(i), text="é ☃ \u0000"), SPEC, "h", "o", 10)
        assert created and run.run_id == f"r{i}"
    got = await store.get_run("r1")
    assert got is not None and got.input == {"text": "é ☃ \u0000"} and [s.name for s in got.steps] == ["a", "b"]
    assert await store.get_run("nope") is None
    assert [r.run_id for r in await store.list_runs()] == ["r2", "r1", "r0"]  # newest first
    assert [r.run_id for r in await store.list_runs(limit=2)] == ["r2", "r1"]
    listed = await store.list_runs(status=RunStatus.PENDING, workflow="w")
    assert len(listed) == 3 and all([s.name for s in r.steps] == ["a", "b"] for r in listed)
    assert await store.list_runs(workflow="other") == [] and await store.list_runs(status=RunStatus.FAILED) == []
    assert await store.get_spec("r0") == SPEC
    with pytest.raises(KeyError):
        await store.get_spec("nope")


async def test_idempotency_keys_hold_even_for_simultaneous_creates(kind: str, store_factory: StoreFactory) -> None:
    one, two = await store_factory(kind), await store_factory(kind)  # two replicas' handles
    results = await asyncio.gather(
        one.create_run(new_run("x1", key="k"), SPEC, "h", "a", 10),
        two.create_run(new_run("x2", key="k"), SPEC, "h", "b", 10),
    )
    assert sorted(created for _, created in results) == [False, True]
    assert results[0][0].run_id == results[1][0].run_id
    assert len(await one.list_runs()) == 1
    with pytest.raises(Conflict) as info:
        await two.create_run(new_run("x3", key="k"), SPEC, "other-hash", "b", 10)
    assert info.value.details["run_id"] == results[0][0].run_id


async def test_fenced_writes_claims_renewals_and_release(kind: str, store_factory: StoreFactory) -> None:
    clock = Clock()
    a, b = await store_factory(kind, clock=clock), await store_factory(kind, clock=clock)
    await a.create_run(new_run("r"), SPEC, "h", "a", 10)
    lease_a = Lease("a", 1)
    run = await a.get_run("r")
    assert run is not None
    await a.save_run(run.model_copy(update={"status": RunStatus.RUNNING}), lease_a)
    await a.save_step("r", StepState(name="a", task_type="echo", status=StepStatus.SUCCEEDED, result={"v": [1]}), lease_a)
    assert await b.claim_unfinished("b", 10) == []  # a's lease holds
    assert await a.renew("a", {"r": 1}, 10) == []
    clock.now += 11
    assert await b.claim_unfinished("b", 10) == [("r", 2)]
    assert await a.renew("a", {"r": 1}, 10) == ["r"]
    with pytest.raises(LeaseLost):
        await a.save_step("r", StepState(name="b", task_type="echo", status=StepStatus.SUCCEEDED), lease_a)
    with pytest.raises(LeaseLost):
        await a.save_run(run, lease_a)
    after = await b.get_run("r")
    assert after is not None and after.status is RunStatus.RUNNING
    assert after.step("a").result == {"v": [1]} and after.step("b").status is StepStatus.PENDING
    await a.release("r", lease_a)  # not a's any more: no effect
    assert await a.claim_unfinished("a", 10) == []
    await b.release("r", Lease("b", 2))
    assert await a.claim_unfinished("a", 10) == [("r", 3)]  # released: claimable at once
    # A run update that also releases (how a run that ended is written): one fenced write.
    with pytest.raises(LeaseLost):
        await b.save_run(after, Lease("b", 2), release=True)
    await a.save_run(after.model_copy(update={"status": RunStatus.RUNNING}), Lease("a", 3), release=True)
    assert await b.claim_unfinished("b", 10) == [("r", 4)]


async def test_several_steps_in_one_fenced_write(kind: str, store_factory: StoreFactory) -> None:
    """How a chain writes: the step that ended and the next one's write-ahead, together."""
    clock = Clock()
    a, b = await store_factory(kind, clock=clock), await store_factory(kind, clock=clock)
    await a.create_run(new_run("r"), SPEC, "h", "a", 10)
    lease_a = Lease("a", 1)
    done = StepState(name="a", task_type="echo", status=StepStatus.SUCCEEDED, result={"v": 1}, attempts=1)
    started = StepState(name="b", task_type="echo", status=StepStatus.RUNNING, attempts=1)
    await a.save_steps("r", [started, done], lease_a)
    run = await b.get_run("r")
    assert run is not None
    assert run.step("a").status is StepStatus.SUCCEEDED and run.step("a").result == {"v": 1}
    assert run.step("b").status is StepStatus.RUNNING and run.step("b").attempts == 1
    clock.now += 11
    assert await b.claim_unfinished("b", 10) == [("r", 2)]
    with pytest.raises(LeaseLost):  # fenced out: nothing of it is written
        await a.save_steps("r", [done.model_copy(update={"result": {"v": 2}}), started], lease_a)
    run = await b.get_run("r")
    assert run is not None and run.step("a").result == {"v": 1}


async def test_a_runs_end_is_written_with_its_last_step_ends(kind: str, store_factory: StoreFactory) -> None:
    """How a run that ended is written: its steps not yet on record and the run's end (with the
    lease released) in one fenced write; fenced out, none of it is written."""
    clock = Clock()
    a, b = await store_factory(kind, clock=clock), await store_factory(kind, clock=clock)
    await a.create_run(new_run("r"), SPEC, "h", "a", 10)
    run = await a.get_run("r")
    assert run is not None
    ended = run.model_copy(update={"status": RunStatus.SUCCEEDED, "output": {"b": 2}, "finished_at": 5.0})
    last = StepState(name="b", task_type="echo", status=StepStatus.SUCCEEDED, result=2, attempts=1)
    clock.now += 11
    assert await b.claim_unfinished("b", 10) == [("r", 2)]
    with pytest.raises(LeaseLost):
        await a.save_run(ended, Lease("a", 1), release=True, steps=[last])
    got = await b.get_run("r")
    assert got is not None and got.status is not RunStatus.SUCCEEDED and got.step("b").status is StepStatus.PENDING
    await b.save_run(ended, Lease("b", 2), release=True, steps=[last])
    got = await a.get_run("r")
    assert got is not None and got.status is RunStatus.SUCCEEDED and got.output == {"b": 2}
    assert got.step("b").status is StepStatus.SUCCEEDED and got.step("b").result == 2
    assert got.step("a").status is StepStatus.PENDING  # only the steps given are written
    clock.now += 11
    assert await a.claim_unfinished("a", 10) == []  # ended: nobody claims it


async def test_concurrent_claims_never_overlap(kind: str, store_factory: StoreFactory) -> None:
    clock = Clock()
    handles = [await store_factory(kind, clock=clock) for _ in range(3)]
    for i in range(30):
        await handles[0].create_run(new_run(f"r{i:02d}", created_at=float(i)), SPEC, "h", "gone", 1)
    clock.now += 5
    claims = await asyncio.gather(*(h.claim_unfinished(f"o{i}", 10, limit=12) for i, h in enumerate(handles)))
    ids = [run_id for claim in claims for run_id, _ in claim]
    assert len(ids) == len(set(ids)) == 30
    assert all(epoch == 2 for claim in claims for _, epoch in claim)


async def test_cancel_requests_are_shared(kind: str, store_factory: StoreFactory) -> None:
    one, two = await store_factory(kind), await store_factory(kind)
    await one.create_run(new_run("r"), SPEC, "h", "o", 10)
    assert not await two.cancel_requested("r")
    assert await two.request_cancel("r") and await one.cancel_requested("r")
    assert not await one.request_cancel("nope")


async def test_postgres_migrations_are_versioned_and_safe_to_race(store_factory: StoreFactory) -> None:
    handles = await asyncio.gather(*(store_factory("postgres") for _ in range(4)))  # replicas starting at once
    for handle in handles:
        assert await handle.applied_migrations() == [m[0] for m in POSTGRES_MIGRATIONS]  # type: ignore[attr-defined]


async def test_postgres_away_is_unavailable_fast_and_work_resumes(store_factory: StoreFactory, postgres: Any) -> None:
    store = await store_factory("postgres")
    await store.create_run(new_run("r"), SPEC, "h", "o", 10)
    postgres.stop("immediate")
    try:
        started = time.monotonic()
        with pytest.raises(Unavailable) as info:
            await store.get_run("r")
        assert time.monotonic() - started < 15
        assert info.value.retryable and "postgres at postgresql://postgres@127.0.0.1" in info.value.message
        with pytest.raises(Unavailable):
            await store.create_run(new_run("r2"), SPEC, "h", "o", 10)
    finally:
        postgres.start()
    for _ in range(50):  # the pool reconnects by itself
        try:
            got = await store.get_run("r")
            break
        except Unavailable:
            await asyncio.sleep(0.2)
    assert got is not None and got.run_id == "r"  # nothing accepted was lost
    assert await store.get_run("r2") is None  # nothing refused was half-written
