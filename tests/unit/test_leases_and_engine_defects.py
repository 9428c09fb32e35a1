"""Fenced leases, migrations and the engine defects of the ingress review (no Ray).

Each test names the defect it guards; each failed on the code before the fix.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from typing import Any, Awaitable, Callable

import pytest

from serve_app.core.errors import NotReady
from serve_app.core.models import TaskRequest, TaskResult
from serve_app.workflow.engine import RunEngine
from serve_app.workflow.migrations import SQLITE_MIGRATIONS, migrate_sqlite
from serve_app.workflow.state import RunStatus, StepState, StepStatus
from serve_app.workflow.store import Lease, LeaseLost, MemoryRunStore, RunStore, SqliteRunStore
from tests.conftest import STORE_KINDS, StoreFactory
from tests.unit.test_workflow_engine import spec

pytestmark = pytest.mark.anyio

ONE_STEP = {"one": spec("one", [{"name": "a", "task_type": "echo", "input": {"message": "x"}}])}
TWO_STEPS = {
    "two": spec(
        "two",
        [
            {"name": "a", "task_type": "echo", "input": {"message": "x"}},
            {"name": "b", "task_type": "echo", "input": {"message": "y"}, "depends_on": ["a"]},
        ],
    )
}


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Gate:
    """A fake pool: each task waits until the test opens the gate for its owner."""

    def __init__(self) -> None:
        self.opened: dict[str, asyncio.Event] = {}
        self.calls: list[str] = []

    def submit_for(self, owner: str) -> Callable[[TaskRequest], Any]:
        event = self.opened.setdefault(owner, asyncio.Event())

        async def submit(req: TaskRequest) -> TaskResult:
            self.calls.append(f"{owner}:{req.task_id}")
            await event.wait()
            return TaskResult(success=True, result={"by": owner})

        return submit


@pytest.fixture(params=STORE_KINDS)
def shared(request: pytest.FixtureRequest, store_factory: StoreFactory) -> Callable[[Clock], Awaitable[RunStore]]:
    """Store handles over one database (two connections or pools, like two replicas)."""
    return lambda clock: store_factory(request.param, clock=clock)


async def _until(predicate: Callable[[], Any], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not await predicate():
        assert time.monotonic() < deadline, "condition not reached"
        await asyncio.sleep(0.01)


# ---------------------------------------------------------------- defect 4: fencing


async def test_writes_are_fenced_by_owner_and_epoch(shared: Callable[[Clock], Awaitable[RunStore]]) -> None:
    clock = Clock()
    store = await shared(clock)
    a = RunEngine(store, Gate().submit_for("a"), ONE_STEP, owner="a", lease_s=5, clock=clock)
    run, _ = await a.start("one", {})
    stale = Lease("a", 1)
    await a.shutdown()
    clock.now += 10
    claimed = await store.claim_unfinished("b", 5)
    assert claimed == [(run.run_id, 2)]
    with pytest.raises(LeaseLost):
        await store.save_step(run.run_id, StepState(name="a", task_type="echo", status=StepStatus.SUCCEEDED), stale)
    current = await store.get_run(run.run_id)
    assert current is not None
    with pytest.raises(LeaseLost):
        await store.save_run(current.model_copy(update={"status": RunStatus.FAILED}), stale)
    assert await store.renew("a", {run.run_id: 1}, 5) == [run.run_id]
    assert await store.renew("b", {run.run_id: 2}, 5) == []
    await store.save_step(run.run_id, StepState(name="a", task_type="echo", status=StepStatus.RUNNING), Lease("b", 2))


async def test_a_replica_that_lost_its_lease_stops_driving_the_run(shared: Callable[[Clock], Awaitable[RunStore]]) -> None:
    clock, gate = Clock(), Gate()
    a = RunEngine(await shared(clock), gate.submit_for("a"), TWO_STEPS, owner="a", lease_s=5, clock=clock)
    b = RunEngine(await shared(clock), gate.submit_for("b"), TWO_STEPS, owner="b", lease_s=5, clock=clock)
    run, _ = await a.start("two", {})
    await _until(lambda: _async(len(gate.calls) == 1))  # a's step "a" is in flight
    clock.now += 10  # a missed its renewals (stalled, partitioned): the lease lapses
    assert await b.resume() == [run.run_id]
    await a.renew_leases()  # a learns it lost the run...
    gate.opened["a"].set()  # ...and its in-flight task answering now changes nothing
    await _until(lambda: _async(run.run_id not in a.active_runs))
    mid = await b.get(run.run_id)
    assert mid.step("a").status is StepStatus.RUNNING and mid.step("b").status is StepStatus.PENDING
    gate.opened["b"].set()
    done = await b.wait(run.run_id, 5)
    assert done.status is RunStatus.SUCCEEDED
    assert done.step("a").result == {"by": "b"} and done.step("b").result == {"by": "b"}
    assert not [c for c in gate.calls if c.startswith("a:") and ".b." in c]  # a never started step b
    await b.shutdown()


async def _async(value: Any) -> Any:
    return value


# ---------------------------------------------------------------- defect 3: shutdown race


async def test_shutdown_releases_runs_and_never_claims_them_back(shared: Callable[[Clock], Awaitable[RunStore]]) -> None:
    clock, gate = Clock(), Gate()
    store = await shared(clock)
    a = RunEngine(store, gate.submit_for("a"), ONE_STEP, owner="a", lease_s=5, clock=clock)
    run, _ = await a.start("one", {})
    await _until(lambda: _async(len(gate.calls) == 1))
    await a.shutdown()
    # A lease tick that fires after the release must not take the run back for the dying replica.
    assert await a.resume() == []
    assert a.active_runs == []
    # Released: another replica takes it at once, without waiting for the lease to lapse.
    b = RunEngine(await shared(clock), gate.submit_for("b"), ONE_STEP, owner="b", lease_s=5, clock=clock)
    assert await b.resume() == [run.run_id]
    gate.opened["b"].set()
    assert (await b.wait(run.run_id, 5)).status is RunStatus.SUCCEEDED
    await b.shutdown()


# ---------------------------------------------------------------- defect 2: refused forever


async def test_a_step_its_pool_never_takes_fails_retryable_within_the_start_timeout() -> None:
    refused = 0

    async def never_ready(req: TaskRequest) -> TaskResult:
        nonlocal refused
        refused += 1
        return TaskResult.failure(NotReady("handler pool 'general' is not ready"))

    eng = RunEngine(MemoryRunStore(), never_ready, ONE_STEP, owner="o", step_start_timeout_s=0.5)
    started = time.monotonic()
    run, _ = await eng.start("one", {})
    done = await eng.wait(run.run_id, 10)
    assert time.monotonic() - started < 5
    assert done.status is RunStatus.FAILED and refused >= 2
    step = done.step("a")
    assert step.status is StepStatus.FAILED and step.attempts == 0  # refused, never run
    assert step.error is not None and step.error.code == "not_ready" and step.error.retryable
    assert "could not start within 0.5s" in step.error.message
    assert done.error is not None and done.error.retryable and "could not start" in done.error.message
    await eng.shutdown()


# ---------------------------------------------------------------- defect 8: cancel vs finish


class CancelWhileSaving(MemoryRunStore):
    """Opens the window: the step's success is being written when the cancel arrives."""

    engine: RunEngine | None = None

    async def save_step(self, run_id: str, step: StepState, lease: Lease) -> None:
        if step.status is StepStatus.SUCCEEDED and self.engine is not None:
            asyncio.get_running_loop().create_task(self.engine.cancel(run_id, wait_s=0))
            await asyncio.sleep(0.2)
        await super().save_step(run_id, step, lease)


async def test_a_step_that_finishes_while_a_cancel_is_processed_keeps_its_result() -> None:
    async def ok(req: TaskRequest) -> TaskResult:
        return TaskResult(success=True, result={"done": req.task_id})

    store = CancelWhileSaving()
    eng = RunEngine(store, ok, TWO_STEPS, owner="o", cancel_poll_s=0.05)
    store.engine = eng
    run, _ = await eng.start("two", {})
    done = await eng.wait(run.run_id, 5)
    assert done.status is RunStatus.CANCELLED
    assert done.step("a").status is StepStatus.SUCCEEDED and done.step("a").result is not None
    assert done.step("b").status is StepStatus.CANCELLED
    await eng.shutdown()


# ---------------------------------------------------------------- migrations


def test_migrations_upgrade_a_pre_versioning_database(tmp_path: Any) -> None:
    path = str(tmp_path / "old.sqlite3")
    db = sqlite3.connect(path, isolation_level=None)
    for statement in SQLITE_MIGRATIONS[0][2]:  # the schema as the first release wrote it
        db.execute(statement)
    db.execute(
        "INSERT INTO runs (run_id, workflow, status, input_json, request_hash, spec_json, created_at)"
        " VALUES ('r1', 'one', 'running', '{}', 'h', ?, 1)",
        (ONE_STEP["one"].model_dump_json(),),
    )
    assert migrate_sqlite(db) == [v for v, _, _ in SQLITE_MIGRATIONS[1:]]
    assert migrate_sqlite(db) == []  # idempotent; replicas starting together apply each once
    versions = [r[0] for r in db.execute("SELECT version FROM schema_migrations ORDER BY version")]
    assert versions == [v for v, _, _ in SQLITE_MIGRATIONS]
    assert db.execute("SELECT lease_epoch, priority, concurrency_key FROM runs WHERE run_id='r1'").fetchone() == (0, 1, None)
    db.close()
    store = SqliteRunStore(path)
    assert store.path == path
    old = asyncio.run(store.get_run("r1"))  # a row written before the upgrade still reads
    assert old is not None and old.priority == 1 and old.parent_run_id is None
    asyncio.run(store.close())


def test_every_backend_has_the_same_migrations() -> None:
    from serve_app.workflow.migrations import POSTGRES_MIGRATIONS

    assert [(v, name) for v, name, _ in SQLITE_MIGRATIONS] == [(v, name) for v, name, _ in POSTGRES_MIGRATIONS]
    assert [v for v, _, _ in SQLITE_MIGRATIONS] == list(range(1, len(SQLITE_MIGRATIONS) + 1))
