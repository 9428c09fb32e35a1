"""Group commit: a small write that finds the connection free commits on the loop; writes that
queue behind a busy connection share transactions; each caller gets its own outcome."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import time
from pathlib import Path

import pytest

from serve_app.workflow.group_commit import INLINE_MAX_BYTES, GroupCommit, WalCheckpointer

pytestmark = pytest.mark.anyio


def _db(path: Path) -> sqlite3.Connection:
    db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("CREATE TABLE t (k INTEGER PRIMARY KEY, v TEXT NOT NULL)")
    db.executemany("INSERT INTO t VALUES (?, 'old')", [(i,) for i in range(200)])
    return db


async def test_writes_queued_behind_a_busy_connection_share_commits_and_are_all_durable(tmp_path: Path) -> None:
    db = _db(tmp_path / "a.sqlite3")
    lock = threading.Lock()
    writes = GroupCommit(db, lock)
    done_reading = threading.Event()
    reader = threading.Thread(target=lambda: (lock.acquire(), done_reading.wait(), lock.release()))
    reader.start()  # a read in a thread holds the connection until every write has been sent
    while not lock.locked():
        await asyncio.sleep(0.001)
    sent = asyncio.gather(*[writes.execute("UPDATE t SET v='new' WHERE k=?", (i,)) for i in range(200)])
    await asyncio.sleep(0.05)  # every write has looked at the connection (and found it busy)
    done_reading.set()
    counts = await sent
    reader.join()
    assert counts == [1] * 200
    assert writes.inline == 0 and writes.writes == 200 and writes.batches < 50  # the first goes alone, the rest in a few batches
    # Another connection sees every write: each caller was answered only after its commit.
    other = sqlite3.connect(tmp_path / "a.sqlite3")
    assert other.execute("SELECT count(*) FROM t WHERE v='new'").fetchone() == (200,)


async def test_a_small_write_on_a_free_connection_commits_on_the_loop_and_a_big_one_in_the_thread(tmp_path: Path) -> None:
    writes = GroupCommit(_db(tmp_path / "i.sqlite3"), threading.Lock())
    assert await writes.execute("UPDATE t SET v='x' WHERE k=?", (1,)) == 1
    assert writes.inline == 1
    assert await writes.execute("UPDATE t SET v=? WHERE k=?", ("y" * (INLINE_MAX_BYTES + 1), 2)) == 1
    assert writes.inline == 1 and writes.writes == 2
    other = sqlite3.connect(tmp_path / "i.sqlite3")
    assert other.execute("SELECT k, length(v) FROM t WHERE k IN (1, 2) ORDER BY k").fetchall() == [(1, 1), (2, INLINE_MAX_BYTES + 1)]


async def test_a_write_never_waits_on_the_loop_for_another_connections_lock(tmp_path: Path) -> None:
    db = _db(tmp_path / "l.sqlite3")
    writes = GroupCommit(db, threading.Lock())
    other = sqlite3.connect(tmp_path / "l.sqlite3", isolation_level=None, check_same_thread=False)
    other.execute("BEGIN IMMEDIATE")  # another process's write transaction
    write = asyncio.ensure_future(writes.execute("UPDATE t SET v='late' WHERE k=?", (3,)))
    started = time.monotonic()
    await asyncio.sleep(0.05)  # the loop runs meanwhile: the write waits in the thread
    assert time.monotonic() - started < 0.5 and not write.done()
    other.execute("COMMIT")
    assert await write == 1
    assert writes.inline == 0
    # At rest the connection does not wait (the loop's calls need no PRAGMA); the thread waited
    # above with the connection's own timeout, and a read in a thread does too.
    assert db.execute("PRAGMA busy_timeout").fetchone() == (0,)
    other.execute("BEGIN IMMEDIATE")
    assert await writes.run(lambda: db.execute("PRAGMA busy_timeout").fetchone()) == (5000,)
    other.execute("COMMIT")
    assert db.execute("PRAGMA busy_timeout").fetchone() == (0,)


async def test_checkpoints_run_beside_the_writes(tmp_path: Path) -> None:
    path = tmp_path / "w.sqlite3"
    db = _db(path)
    db.execute("PRAGMA wal_autocheckpoint=0")
    checkpointer = WalCheckpointer(str(path), every=10)
    writes = GroupCommit(db, threading.Lock(), checkpointer=checkpointer)
    for i in range(25):
        await writes.execute("UPDATE t SET v=? WHERE k=?", (f"v{i}", i))
    for _ in range(200):
        if checkpointer.checkpoints >= 1:
            break
        await asyncio.sleep(0.01)
    assert checkpointer.checkpoints >= 1 and writes.inline == 25
    other = sqlite3.connect(path)
    assert other.execute("SELECT count(*) FROM t WHERE v LIKE 'v%'").fetchone() == (25,)


async def test_a_lone_write_is_committed_at_once(tmp_path: Path) -> None:
    writes = GroupCommit(_db(tmp_path / "b.sqlite3"), threading.Lock())
    assert await writes.execute("UPDATE t SET v='x' WHERE k=?", (1,)) == 1
    assert await writes.execute("UPDATE t SET v='x' WHERE k=?", (999,)) == 0  # no row: the caller decides
    assert (writes.batches, writes.writes) == (2, 2)


async def test_statements_queued_together_share_one_commit(tmp_path: Path) -> None:
    writes = GroupCommit(_db(tmp_path / "m.sqlite3"), threading.Lock())
    assert await writes.execute_many([("UPDATE t SET v='x' WHERE k=?", (1,)), ("UPDATE t SET v='y' WHERE k=?", (999,))]) == [1, 0]
    assert (writes.batches, writes.writes) == (1, 2)


async def test_a_failing_statement_fails_only_its_caller(tmp_path: Path) -> None:
    db = _db(tmp_path / "c.sqlite3")
    writes = GroupCommit(db, threading.Lock())
    results = await asyncio.gather(
        *[writes.execute("UPDATE t SET v='ok' WHERE k=?", (i,)) for i in range(10)],
        writes.execute("UPDATE t SET v=NULL WHERE k=?", (50,)),  # NOT NULL: fails
        *[writes.execute("UPDATE t SET v='ok' WHERE k=?", (i,)) for i in range(10, 20)],
        return_exceptions=True,
    )
    assert isinstance(results[10], sqlite3.IntegrityError)
    assert [r for i, r in enumerate(results) if i != 10] == [1] * 20
    assert db.execute("SELECT count(*) FROM t WHERE v='ok'").fetchone() == (20,)
    assert db.execute("SELECT v FROM t WHERE k=50").fetchone() == ("old",)
    assert not db.in_transaction


async def test_the_sqlite_store_checkpoints_beside_its_writes(tmp_path: Path) -> None:
    from serve_app.workflow.state import RunState, StepState, StepStatus
    from serve_app.workflow.store import Lease, SqliteRunStore

    store = SqliteRunStore(str(tmp_path / "runs.sqlite3"))
    assert store._db.execute("PRAGMA wal_autocheckpoint").fetchone() == (0,)  # no commit pays for one
    run = RunState(run_id="r", workflow="w", input={}, created_at=1.0, steps=[StepState(name="a", task_type="echo")])
    await store.create_run(run, '{"name": "w", "steps": []}', "h", "o", 60)
    step = run.steps[0]
    for attempt in range(300):
        step.status, step.attempts = StepStatus.RUNNING, attempt
        await store.save_steps("r", [step], Lease("o", 1))
    for _ in range(200):
        if store._checkpointer is not None and store._checkpointer.checkpoints:
            break
        await asyncio.sleep(0.01)
    assert store._checkpointer is not None and store._checkpointer.checkpoints >= 1
    assert store._writes.inline == 300 + 1  # the steps, and the run's creation
    got = await store.get_run("r")
    assert got is not None and got.steps[0].attempts == 299
    await store.close()


async def test_the_sqlite_store_creates_and_reads_runs_on_the_loop_unless_the_database_is_busy(tmp_path: Path) -> None:
    from serve_app.workflow.state import RunState, StepState
    from serve_app.workflow.store import SqliteRunStore

    path = tmp_path / "runs.sqlite3"
    store = SqliteRunStore(str(path))

    def run(run_id: str) -> RunState:
        return RunState(run_id=run_id, workflow="w", input={"n": 1}, created_at=1.0, steps=[StepState(name="a", task_type="echo")])

    await store.create_run(run("r1"), '{"name": "w", "steps": []}', "h", "o", 60)
    assert (await store.get_run("r1")) is not None
    assert store._writes.inline == 2
    other = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    other.execute("BEGIN IMMEDIATE")  # another process holds the write lock: the creation waits in the thread
    creating = asyncio.ensure_future(store.create_run(run("r2"), '{"name": "w", "steps": []}', "h", "o", 60))
    started = time.monotonic()
    await asyncio.sleep(0.05)  # the loop runs meanwhile
    assert time.monotonic() - started < 0.5 and not creating.done()
    other.execute("COMMIT")
    created, fresh = await creating
    assert fresh and created.run_id == "r2" and store._writes.inline == 2
    assert (await store.get_run("r2")) is not None and store._writes.inline == 3
    # A run whose input is large is created in the thread, like any large write (its whole row
    # counts, not only the definition's text).
    big = run("r3").model_copy(update={"input": {"text": "x" * (INLINE_MAX_BYTES + 1)}})
    created, fresh = await store.create_run(big, '{"name": "w", "steps": []}', "h", "o", 60)
    assert fresh and store._writes.inline == 3
    got = await store.get_run("r3")
    assert got is not None and got.input == big.input
    await store.close()


async def test_the_sqlite_store_writes_small_map_batches_on_the_loop_and_big_ones_in_the_thread(tmp_path: Path) -> None:
    from serve_app.workflow.state import RunState, StepState, StepStatus
    from serve_app.workflow.store import ItemOutcome, Lease, LeaseLost, SqliteRunStore

    store = SqliteRunStore(str(tmp_path / "runs.sqlite3"))
    run = RunState(run_id="r", workflow="w", input={}, created_at=1.0, steps=[StepState(name="m", task_type="echo")])
    await store.create_run(run, '{"name": "w", "steps": []}', "h", "o", 60)
    inline = store._writes.inline
    await store.save_items("r", "m", [ItemOutcome(i, StepStatus.SUCCEEDED, 1, {"i": i}) for i in range(16)], Lease("o", 1))
    assert store._writes.inline == inline + 1
    big = ItemOutcome(16, StepStatus.SUCCEEDED, 1, "x" * (INLINE_MAX_BYTES + 1))
    await store.save_items("r", "m", [big], Lease("o", 1))
    assert store._writes.inline == inline + 1  # through the thread
    with pytest.raises(LeaseLost):  # fenced either way
        await store.save_items("r", "m", [ItemOutcome(17, StepStatus.SUCCEEDED, 1, 17)], Lease("someone else", 1))
    items = await store.load_items("r", "m")
    assert sorted(items) == list(range(17)) and items[3].result == {"i": 3} and items[16].result == big.result
    await store.close()
