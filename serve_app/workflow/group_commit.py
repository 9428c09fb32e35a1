"""Group commit for SQLite: single-statement writes from many coroutines, one transaction per batch.

Every caller waits for the commit of the batch its write joined, so nothing is
acknowledged before it is in the database; writes that arrive while a batch is
committing form the next one. Under concurrency (many runs saving steps at once)
this is one thread hop and one commit per batch instead of per write.

A small write that finds the connection free is committed at once on the event
loop instead: in WAL mode with ``synchronous=NORMAL`` a commit is a write into
the page cache (about 16 us), while the thread hop around it cost about 160 us,
most of a workflow step's store time. It never waits there: it does not wait
for a lock another connection holds (it goes to the thread instead), and WAL
checkpoints, the one part of a commit that syncs to disk, run from a thread and
a connection of their own (:class:`WalCheckpointer`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
import threading
from typing import Any, Callable, Iterable, Iterator, Sequence, TypeVar, Union

logger = logging.getLogger("serveflow.store")

Outcome = Union[int, BaseException]  # a statement's rowcount, or why it failed
T = TypeVar("T")

# Writes whose parameters are larger than this go through the thread even when the connection
# is free: copying a big step result into the WAL is worth a thread hop.
INLINE_MAX_BYTES = 64 * 1024
_SQLITE_BUSY, _SQLITE_LOCKED = 5, 6


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


class WalCheckpointer:
    """Checkpoints a WAL database from a thread and a connection of its own, every ``every``
    commits noted, so that no commit (some are made on the event loop) pays for one. The
    database's own connection has ``wal_autocheckpoint`` off."""

    def __init__(self, path: str, *, every: int = 256) -> None:
        self._path, self._every = path, every
        self._count = 0
        self._running: asyncio.Task[None] | None = None
        self.checkpoints = 0

    def note(self, commits: int = 1) -> None:
        self._count += commits
        if self._count >= self._every and self._running is None:
            self._count = 0
            self._running = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        try:
            await asyncio.to_thread(self.checkpoint)
        except Exception as exc:  # the next one tries again; the WAL only grows meanwhile
            logger.warning("SQLite checkpoint of %s failed: %s", self._path, exc)
        finally:
            self._running = None

    def checkpoint(self) -> None:
        # PASSIVE: copies what it can without waiting for readers or writers.
        with contextlib.closing(sqlite3.connect(self._path, timeout=30)) as db:
            db.execute("PRAGMA wal_checkpoint(PASSIVE)")
        self.checkpoints += 1


class GroupCommit:
    def __init__(
        self,
        db: sqlite3.Connection,
        lock: threading.Lock,
        *,
        max_batch: int = 512,
        checkpointer: WalCheckpointer | None = None,
    ) -> None:
        self._db = db
        self._lock = lock
        self._max_batch = max_batch
        self._checkpointer = checkpointer
        # At rest the connection does not wait for another connection's lock: the event loop's
        # calls (try_now) must not, and they are most calls. A call in a thread waits up to the
        # connection's own timeout (:meth:`_waiting`). Two PRAGMAs per thread hop, none per call
        # on the loop (they were two per call on the loop, 8 of a one-step run's 19 statements).
        self._busy_timeout_ms = int(db.execute("PRAGMA busy_timeout").fetchone()[0])
        db.execute("PRAGMA busy_timeout=0")
        self._pending: list[tuple[str, tuple[Any, ...], asyncio.Future[int]]] = []
        self._flushing = False
        self.batches = 0  # transactions committed (for tests and benchmarks)
        self.writes = 0
        self.inline = 0  # calls done on the event loop (try_now)

    async def execute(self, sql: str, params: tuple[Any, ...]) -> int:
        """Run one write statement; returns its rowcount once it is committed."""
        return (await self.execute_many([(sql, params)]))[0]

    async def execute_many(self, statements: list[tuple[str, tuple[Any, ...]]]) -> list[int]:
        """Run these write statements, queued together (so in one batch, unless it is full);
        returns their rowcounts once all are committed."""
        if fits_inline(params for _, params in statements):
            outcomes = self._commit_inline(statements)
            if outcomes is not None:
                for outcome in outcomes:
                    if isinstance(outcome, BaseException):
                        raise outcome
                return outcomes  # type: ignore[return-value]
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
                else:
                    self._committed()
                for (_, _, future), outcome in zip(batch, outcomes, strict=True):
                    if future.done():  # its caller was cancelled
                        continue
                    if isinstance(outcome, BaseException):
                        future.set_exception(outcome)
                    else:
                        future.set_result(outcome)
        finally:
            self._flushing = False

    def _committed(self) -> None:
        if self._checkpointer is not None:
            self._checkpointer.note()

    async def run(self, fn: Callable[[], T], *, now: bool = False) -> T:
        """``fn()`` under the connection's lock in a thread; with ``now``, on the calling thread
        when the connection is free (:meth:`try_now`)."""
        if now:
            done, value = self.try_now(fn)
            if done:
                return value  # type: ignore[return-value]

        def locked() -> T:
            with self._lock, self._waiting():
                return fn()

        try:
            return await asyncio.to_thread(locked)
        finally:
            self._committed()  # it may have written

    def try_now(self, fn: Callable[[], T]) -> tuple[bool, T | None]:
        """``fn()`` on the calling thread, if the connection is free and no batch is committing,
        and without waiting for another connection's lock: ``(True, value)``; else ``(False,
        None)`` and nothing was done (a 'database is locked' is that too). Its errors propagate."""
        if self._flushing or not self._lock.acquire(blocking=False):
            return False, None
        try:
            value = fn()  # the connection's busy timeout is 0 at rest
        except sqlite3.OperationalError as exc:
            if _busy(exc):
                return False, None
            raise
        finally:
            self._lock.release()
        self.inline += 1
        self._committed()
        return True, value

    def _commit_inline(self, statements: list[tuple[str, tuple[Any, ...]]]) -> list[Outcome] | None:
        """Commit on the calling thread (see :meth:`try_now`): None when that could not be done."""

        def commit() -> list[Outcome]:
            try:
                return self._commit_locked(statements)
            except sqlite3.Error as exc:
                if isinstance(exc, sqlite3.OperationalError) and _busy(exc):
                    raise
                return [exc] * len(statements)

        done, outcomes = self.try_now(commit)
        return outcomes if done else None

    def _commit(self, statements: list[tuple[str, tuple[Any, ...]]]) -> list[Outcome]:
        with self._lock, self._waiting():
            return self._commit_locked(statements)

    @contextlib.contextmanager
    def _waiting(self) -> Iterator[None]:
        """Within the lock, in a thread: wait for another connection's lock as the connection was
        opened to (its ``timeout``), then back to not waiting."""
        self._db.execute(f"PRAGMA busy_timeout={self._busy_timeout_ms}")
        try:
            yield
        finally:
            self._db.execute("PRAGMA busy_timeout=0")

    def _commit_locked(self, statements: list[tuple[str, tuple[Any, ...]]]) -> list[Outcome]:
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


def _busy(exc: sqlite3.OperationalError) -> bool:
    return getattr(exc, "sqlite_errorcode", None) in (_SQLITE_BUSY, _SQLITE_LOCKED) or "locked" in str(exc)


def fits_inline(rows: Iterable[Sequence[Any]]) -> bool:
    """Whether these statement parameters are small enough to be written on the event loop."""
    size = 0
    for params in rows:
        for value in params:
            if isinstance(value, (str, bytes)):
                size += len(value)
    return size <= INLINE_MAX_BYTES
