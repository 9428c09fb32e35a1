"""Group commit: concurrent writes share transactions; each caller still gets its own outcome."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from pathlib import Path

import pytest

from serve_app.workflow.group_commit import GroupCommit

pytestmark = pytest.mark.anyio


def _db(path: Path) -> sqlite3.Connection:
    db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("CREATE TABLE t (k INTEGER PRIMARY KEY, v TEXT NOT NULL)")
    db.executemany("INSERT INTO t VALUES (?, 'old')", [(i,) for i in range(200)])
    return db


async def test_concurrent_writes_share_commits_and_are_all_durable(tmp_path: Path) -> None:
    db = _db(tmp_path / "a.sqlite3")
    writes = GroupCommit(db, threading.Lock())
    counts = await asyncio.gather(*[writes.execute("UPDATE t SET v='new' WHERE k=?", (i,)) for i in range(200)])
    assert counts == [1] * 200
    assert writes.writes == 200 and writes.batches < 50  # the first goes alone, the rest in a few batches
    # Another connection sees every write: each caller was answered only after its commit.
    other = sqlite3.connect(tmp_path / "a.sqlite3")
    assert other.execute("SELECT count(*) FROM t WHERE v='new'").fetchone() == (200,)


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
