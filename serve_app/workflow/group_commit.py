"""Group commit for SQLite: single-statement writes from many coroutines, one transaction per batch.

Every caller waits for the commit of the batch its write joined, so nothing is
acknowledged before it is in the database; writes that arrive while a batch is
committing form the next one. Under concurrency (many runs saving steps at once)
this is one thread hop and one commit per batch instead of per write; a lone
write is committed on its own at once, as before.
"""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from typing import Any, Callable, TypeVar, Union

Outcome = Union[int, BaseException]  # a statement's rowcount, or why it failed
T = TypeVar("T")


def transaction(db: sqlite3.Connection, fn: Callable[[sqlite3.Connection], T]) -> T:
    """``fn(db)`` in one ``BEGIN IMMEDIATE`` transaction: committed when it returns, rolled back
    when it (or the commit) raises."""
    db.execute("BEGIN IMMEDIATE")
    try:
        out = fn(db)
        db.execute("COMMIT")
    except BaseException:
        if db.in_transaction:
            db.execute("ROLLBACK")
        raise
    return out


class GroupCommit:
    def __init__(self, db: sqlite3.Connection, lock: threading.Lock, *, max_batch: int = 512) -> None:
        self._db = db
        self._lock = lock
        self._max_batch = max_batch
        self._pending: list[tuple[str, tuple[Any, ...], asyncio.Future[int]]] = []
        self._flushing = False
        self.batches = 0  # transactions committed (for tests and benchmarks)
        self.writes = 0

    async def execute(self, sql: str, params: tuple[Any, ...]) -> int:
        """Run one write statement; returns its rowcount once it is committed."""
        return (await self.execute_many([(sql, params)]))[0]

    async def execute_many(self, statements: list[tuple[str, tuple[Any, ...]]]) -> list[int]:
        """Run these write statements, queued together (so in one batch, unless it is full);
        returns their rowcounts once all are committed."""
        loop = asyncio.get_running_loop()
        futures: list[asyncio.Future[int]] = []
        for sql, params in statements:
            futures.append(loop.create_future())
            self._pending.append((sql, params, futures[-1]))
        if not self._flushing:
            self._flushing = True
            loop.create_task(self._flush())
        try:
            return [await future for future in futures]
        except BaseException:
            for future in futures:  # nobody will read the others' outcomes
                future.cancel()
            raise

    async def _flush(self) -> None:
        try:
            while self._pending:
                batch, self._pending = self._pending[: self._max_batch], self._pending[self._max_batch :]
                try:
                    outcomes = await asyncio.to_thread(self._commit, [(sql, params) for sql, params, _ in batch])
                except asyncio.CancelledError:  # the loop is going away: so are the waiting callers
                    for _, _, future in [*batch, *self._pending]:
                        future.cancel()
                    self._pending = []
                    raise
                except Exception as exc:  # the commit failed: no write of this batch is durable
                    outcomes = [exc] * len(batch)
                for (_, _, future), outcome in zip(batch, outcomes, strict=True):
                    if future.done():  # its caller was cancelled
                        continue
                    if isinstance(outcome, BaseException):
                        future.set_exception(outcome)
                    else:
                        future.set_result(outcome)
        finally:
            self._flushing = False

    def _commit(self, statements: list[tuple[str, tuple[Any, ...]]]) -> list[Outcome]:
        with self._lock:
            if len(statements) == 1:  # autocommit: one statement is its own transaction
                self.batches += 1
                self.writes += 1
                return [self._db.execute(*statements[0]).rowcount]

            def each(db: sqlite3.Connection) -> list[Outcome]:
                outcomes: list[Outcome] = []
                for sql, params in statements:
                    try:
                        outcomes.append(db.execute(sql, params).rowcount)
                    except sqlite3.Error as exc:  # that statement is undone; the others stand
                        outcomes.append(exc)
                return outcomes

            outcomes = transaction(self._db, each)
            self.batches += 1
            self.writes += len(statements)
            return outcomes
