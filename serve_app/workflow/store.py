"""Where run and step state lives: a small async interface, SQLite and in-memory backends.

The engine only talks to :class:`RunStore`, so a server database can follow
without touching it. Every state change is written before the engine acts on
it (write-ahead), so a restarted Coordinator resumes from the store: finished
steps keep their results, unfinished runs are claimed again through leases.
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Mapping, Protocol, Sequence, TypeVar

from serve_app.core import jsonio
from serve_app.core.errors import Conflict
from serve_app.core.models import ErrorInfo
from serve_app.workflow.migrations import SQLITE_MIGRATIONS, migrate_sqlite
from serve_app.workflow.state import RunState, RunStatus, StepState, StepStatus

T = TypeVar("T")


class LeaseLost(Exception):
    """A fenced write was refused: this owner no longer holds the run at this epoch.

    Another Coordinator claimed it (our lease lapsed); the caller must stop
    driving the run at once and write nothing more for it."""

    def __init__(self, run_id: str, lease: Lease) -> None:
        super().__init__(f"lease on run {run_id} lost by {lease.owner} (epoch {lease.epoch})")
        self.run_id = run_id
        self.lease = lease


@dataclass(frozen=True)
class Lease:
    """Who drives a run, and since which claim. Every write names it; a claim bumps the epoch."""

    owner: str
    epoch: int


class RunStore(Protocol):
    where: str  # where the runs live, safe to show (no password)

    async def create_run(self, run: RunState, spec_json: str, request_hash: str, owner: str, lease_s: float) -> tuple[RunState, bool]:
        """Insert ``run`` (leased to ``owner`` at epoch 1), or return the run already holding its
        idempotency key. Returns ``(run, created)``. Raises :class:`Conflict` when the key exists
        with a different request."""

    async def get_run(self, run_id: str) -> RunState | None: ...
    async def get_spec(self, run_id: str) -> str: ...
    async def list_runs(self, *, status: RunStatus | None = None, workflow: str | None = None, limit: int = 50) -> list[RunState]: ...
    async def save_run(self, run: RunState, lease: Lease) -> None:
        """Persist run-level fields (status, output, error, times); :class:`LeaseLost` if not ``lease``'s."""

    async def save_step(self, run_id: str, step: StepState, lease: Lease) -> None:
        """Persist one step; :class:`LeaseLost` if the run is not ``lease``'s."""

    async def claim_unfinished(self, owner: str, lease_s: float, limit: int = 100) -> list[tuple[str, int]]:
        """Lease unfinished runs whose lease expired to ``owner``, each at a new epoch; returns
        ``(run_id, epoch)`` pairs. Never re-claims a run ``owner`` released or still holds."""

    async def renew(self, owner: str, epochs: Mapping[str, int], lease_s: float) -> list[str]:
        """Extend the leases held at these epochs; returns the run ids whose lease was lost."""

    async def release(self, run_id: str, lease: Lease) -> None:
        """Give the run up so the next claimant takes it at once (no-op if not ours)."""

    async def request_cancel(self, run_id: str) -> bool: ...
    async def cancel_requested(self, run_id: str) -> bool: ...
    async def close(self) -> None: ...


_UNFINISHED = (RunStatus.PENDING.value, RunStatus.RUNNING.value)


def _dump(value: Any) -> str | None:
    return None if value is None else jsonio.dumps(value)


def _error(raw: str | None) -> ErrorInfo | None:
    return None if raw is None else ErrorInfo.model_validate(jsonio.load_stored(raw))


def _error_json(error: ErrorInfo | None) -> str | None:
    return None if error is None else error.model_dump_json()


# The columns every SQL backend reads a run and its steps with, and how a row becomes state.
RUN_COLUMNS = "run_id, workflow, status, input_json, output_json, error_json, idempotency_key, created_at, started_at, finished_at, trace_id"
STEP_COLUMNS = "name, task_type, status, attempts, started_at, finished_at, result_json, error_json"
# Fenced run updates, the same SQL on every backend but for the placeholder ({p}: ? or %s).
SAVE_RUN_SQL = (
    "UPDATE runs SET status={p}, output_json={p}, error_json={p}, started_at={p}, finished_at={p}"
    " WHERE run_id={p} AND owner={p} AND lease_epoch={p}"
)
RELEASE_SQL = "UPDATE runs SET lease_until=0 WHERE run_id={p} AND owner={p} AND lease_epoch={p}"


def step_from_row(r: Sequence[Any]) -> StepState:
    return StepState(
        name=r[0],
        task_type=r[1],
        status=StepStatus(r[2]),
        attempts=r[3],
        started_at=r[4],
        finished_at=r[5],
        result=jsonio.load_stored(r[6]),
        error=_error(r[7]),
    )


def run_from_row(row: Sequence[Any], steps: Iterable[Sequence[Any]]) -> RunState:
    return RunState(
        run_id=row[0],
        workflow=row[1],
        status=RunStatus(row[2]),
        input=jsonio.load_stored(row[3]),
        output=jsonio.load_stored(row[4]),
        error=_error(row[5]),
        idempotency_key=row[6],
        created_at=row[7],
        started_at=row[8],
        finished_at=row[9],
        trace_id=row[10],
        steps=[step_from_row(r) for r in steps],
    )


def steps_by_run(rows: Iterable[Sequence[Any]]) -> dict[str, list[Sequence[Any]]]:
    """``(run_id, *step columns)`` rows grouped by run (one query for a whole listing, not one per run)."""
    grouped: dict[str, list[Sequence[Any]]] = {}
    for row in rows:
        grouped.setdefault(row[0], []).append(row[1:])
    return grouped


def new_run_row(run: RunState, spec_json: str, request_hash: str, owner: str, lease_until: float) -> tuple[Any, ...]:
    """Values of a new ``runs`` row, in :data:`INSERT_RUN_COLUMNS` order (leased at epoch 1)."""
    return (
        run.run_id, run.workflow, run.status.value, jsonio.dumps(run.input), run.idempotency_key, request_hash,
        spec_json, run.created_at, run.trace_id, owner, lease_until, 1,
    )


INSERT_RUN_COLUMNS = (
    "run_id, workflow, status, input_json, idempotency_key, request_hash, spec_json, created_at, trace_id, owner,"
    " lease_until, lease_epoch"
)


def conflict(key: str, run_id: str) -> Conflict:
    """The one wording for an idempotency key reused with another request (every backend)."""
    return Conflict(f"idempotency key {key!r} was used for a different request", details={"run_id": run_id})


def step_row_values(step: StepState) -> tuple[Any, ...]:
    """status, attempts, started_at, finished_at, result_json, error_json of a step update."""
    return (step.status.value, step.attempts, step.started_at, step.finished_at, _dump(step.result), _error_json(step.error))


def run_row_values(run: RunState) -> tuple[Any, ...]:
    """status, output_json, error_json, started_at, finished_at of a run update."""
    return (run.status.value, _dump(run.output), _error_json(run.error), run.started_at, run.finished_at)


class SqliteRunStore:
    """SQLite backend (one connection, WAL, one write transaction at a time)."""

    def __init__(self, path: str, *, clock: Callable[[], float] = time.time) -> None:
        if path != ":memory:":
            os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        self.path = path
        self.where = f"sqlite:{path}"
        self._clock = clock
        self._lock = threading.Lock()
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None, timeout=30)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        migrate_sqlite(self._db, SQLITE_MIGRATIONS)

    async def _io(self, fn: Callable[[], T]) -> T:
        def locked() -> T:
            with self._lock:
                return fn()

        return await asyncio.to_thread(locked)

    def _tx(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        self._db.execute("BEGIN IMMEDIATE")
        try:
            out = fn(self._db)
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")
        return out

    async def create_run(self, run: RunState, spec_json: str, request_hash: str, owner: str, lease_s: float) -> tuple[RunState, bool]:
        def op(db: sqlite3.Connection) -> tuple[str, bool]:
            if run.idempotency_key is not None:
                row = db.execute(
                    "SELECT run_id, request_hash FROM runs WHERE idempotency_key = ?", (run.idempotency_key,)
                ).fetchone()
                if row is not None:
                    if row[1] != request_hash:
                        raise conflict(run.idempotency_key, row[0])
                    return row[0], False
            db.execute(
                f"INSERT INTO runs ({INSERT_RUN_COLUMNS}) VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
                new_run_row(run, spec_json, request_hash, owner, self._clock() + lease_s),
            )
            db.executemany(
                "INSERT INTO steps (run_id, position, name, task_type, status) VALUES (?,?,?,?,?)",
                [(run.run_id, i, s.name, s.task_type, s.status.value) for i, s in enumerate(run.steps)],
            )
            return run.run_id, True

        run_id, created = await self._io(lambda: self._tx(op))
        if created:
            return run, True
        existing = await self.get_run(run_id)
        assert existing is not None
        return existing, False

    def _load(self, run_id: str) -> RunState | None:
        row = self._db.execute(f"SELECT {RUN_COLUMNS} FROM runs WHERE run_id = ?", (run_id,)).fetchone()
        if row is None:
            return None
        steps = self._db.execute(f"SELECT {STEP_COLUMNS} FROM steps WHERE run_id = ? ORDER BY position", (run_id,))
        return run_from_row(row, steps)

    async def get_run(self, run_id: str) -> RunState | None:
        return await self._io(lambda: self._load(run_id))

    async def get_spec(self, run_id: str) -> str:
        row = await self._io(lambda: self._db.execute("SELECT spec_json FROM runs WHERE run_id = ?", (run_id,)).fetchone())
        if row is None:
            raise KeyError(run_id)
        return str(row[0])

    async def list_runs(self, *, status: RunStatus | None = None, workflow: str | None = None, limit: int = 50) -> list[RunState]:
        def op() -> list[RunState]:
            clauses, params = [], []
            if status is not None:
                clauses.append("status = ?")
                params.append(status.value)
            if workflow is not None:
                clauses.append("workflow = ?")
                params.append(workflow)
            where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
            rows = self._db.execute(
                f"SELECT {RUN_COLUMNS} FROM runs {where} ORDER BY created_at DESC LIMIT ?", (*params, limit)
            ).fetchall()
            if not rows:
                return []
            steps = steps_by_run(
                self._db.execute(
                    f"SELECT run_id, {STEP_COLUMNS} FROM steps WHERE run_id IN ({','.join('?' * len(rows))})"
                    " ORDER BY run_id, position",
                    [r[0] for r in rows],
                )
            )
            return [run_from_row(r, steps.get(r[0], [])) for r in rows]

        return await self._io(op)

    def _fenced(self, run_id: str, lease: Lease, sql: str, params: tuple[Any, ...]) -> None:
        """Run an UPDATE of ``run_id`` only while ``lease`` holds it (one statement, no race)."""
        with self._lock:
            cur = self._db.execute(sql, params)
        if cur.rowcount == 0:
            raise LeaseLost(run_id, lease)

    _HELD = "SELECT 1 FROM runs WHERE run_id=? AND owner=? AND lease_epoch=?"

    async def save_run(self, run: RunState, lease: Lease) -> None:
        params = (*run_row_values(run), run.run_id, lease.owner, lease.epoch)
        await asyncio.to_thread(self._fenced, run.run_id, lease, SAVE_RUN_SQL.format(p="?"), params)

    async def save_step(self, run_id: str, step: StepState, lease: Lease) -> None:
        sql = (
            "UPDATE steps SET status=?, attempts=?, started_at=?, finished_at=?, result_json=?, error_json=?"
            f" WHERE run_id=? AND name=? AND EXISTS ({self._HELD})"
        )
        params = (*step_row_values(step), run_id, step.name, run_id, lease.owner, lease.epoch)
        await asyncio.to_thread(self._fenced, run_id, lease, sql, params)

    async def claim_unfinished(self, owner: str, lease_s: float, limit: int = 100) -> list[tuple[str, int]]:
        def op(db: sqlite3.Connection) -> list[tuple[str, int]]:
            now = self._clock()
            rows = db.execute(
                "SELECT run_id, lease_epoch FROM runs WHERE status IN (?, ?) AND lease_until < ? ORDER BY created_at LIMIT ?",
                (*_UNFINISHED, now, limit),
            ).fetchall()
            claimed = [(run_id, epoch + 1) for run_id, epoch in rows]
            db.executemany(
                "UPDATE runs SET owner=?, lease_until=?, lease_epoch=? WHERE run_id=?",
                [(owner, now + lease_s, epoch, run_id) for run_id, epoch in claimed],
            )
            return claimed

        return await self._io(lambda: self._tx(op))

    async def renew(self, owner: str, epochs: Mapping[str, int], lease_s: float) -> list[str]:
        def op(db: sqlite3.Connection) -> list[str]:
            until = self._clock() + lease_s
            lost = []
            for run_id, epoch in epochs.items():
                cur = db.execute(
                    "UPDATE runs SET lease_until=? WHERE run_id=? AND owner=? AND lease_epoch=?", (until, run_id, owner, epoch)
                )
                if cur.rowcount == 0:
                    lost.append(run_id)
            return lost

        return await self._io(lambda: self._tx(op))

    async def release(self, run_id: str, lease: Lease) -> None:
        await self._io(
            lambda: self._db.execute(RELEASE_SQL.format(p="?"), (run_id, lease.owner, lease.epoch))
        )

    async def request_cancel(self, run_id: str) -> bool:
        cur = await self._io(lambda: self._db.execute("UPDATE runs SET cancel_requested=1 WHERE run_id=?", (run_id,)))
        return cur.rowcount > 0

    async def cancel_requested(self, run_id: str) -> bool:
        row = await self._io(lambda: self._db.execute("SELECT cancel_requested FROM runs WHERE run_id=?", (run_id,)).fetchone())
        return bool(row and row[0])

    async def close(self) -> None:
        with self._lock:
            self._db.close()


class MemoryRunStore:
    """In-process backend: same semantics, nothing survives a restart ("persistence off")."""

    where = "memory"

    def __init__(self, *, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._runs: dict[str, RunState] = {}
        self._meta: dict[str, dict[str, Any]] = {}
        self._keys: dict[str, str] = {}

    async def create_run(self, run: RunState, spec_json: str, request_hash: str, owner: str, lease_s: float) -> tuple[RunState, bool]:
        if run.idempotency_key is not None and run.idempotency_key in self._keys:
            existing = self._keys[run.idempotency_key]
            if self._meta[existing]["hash"] != request_hash:
                raise conflict(run.idempotency_key, existing)
            return self._runs[existing].model_copy(deep=True), False
        self._runs[run.run_id] = run.model_copy(deep=True)
        self._meta[run.run_id] = {
            "hash": request_hash,
            "spec": spec_json,
            "owner": owner,
            "lease": self._clock() + lease_s,
            "epoch": 1,
            "cancel": False,
        }
        if run.idempotency_key is not None:
            self._keys[run.idempotency_key] = run.run_id
        return run, True

    async def get_run(self, run_id: str) -> RunState | None:
        run = self._runs.get(run_id)
        return None if run is None else run.model_copy(deep=True)

    async def get_spec(self, run_id: str) -> str:
        return str(self._meta[run_id]["spec"])

    async def list_runs(self, *, status: RunStatus | None = None, workflow: str | None = None, limit: int = 50) -> list[RunState]:
        runs = [
            r for r in self._runs.values() if (status is None or r.status is status) and (workflow is None or r.workflow == workflow)
        ]
        runs.sort(key=lambda r: r.created_at, reverse=True)
        return [r.model_copy(deep=True) for r in runs[:limit]]

    def _holds(self, run_id: str, owner: str, epoch: int) -> bool:
        meta = self._meta.get(run_id, {})
        return (meta.get("owner"), meta.get("epoch")) == (owner, epoch)

    def _check(self, run_id: str, lease: Lease) -> None:
        if not self._holds(run_id, lease.owner, lease.epoch):
            raise LeaseLost(run_id, lease)

    async def save_run(self, run: RunState, lease: Lease) -> None:
        self._check(run.run_id, lease)
        stored = self._runs[run.run_id]
        self._runs[run.run_id] = stored.model_copy(
            update={k: getattr(run, k) for k in ("status", "output", "error", "started_at", "finished_at")}, deep=True
        )

    async def save_step(self, run_id: str, step: StepState, lease: Lease) -> None:
        self._check(run_id, lease)
        run = self._runs[run_id]
        run.steps = [step.model_copy(deep=True) if s.name == step.name else s for s in run.steps]

    async def claim_unfinished(self, owner: str, lease_s: float, limit: int = 100) -> list[tuple[str, int]]:
        now = self._clock()
        ids = [
            i
            for i, r in sorted(self._runs.items(), key=lambda kv: kv[1].created_at)
            if r.status.value in _UNFINISHED and self._meta[i]["lease"] < now
        ][:limit]
        for i in ids:
            self._meta[i].update(owner=owner, lease=now + lease_s, epoch=self._meta[i]["epoch"] + 1)
        return [(i, self._meta[i]["epoch"]) for i in ids]

    async def renew(self, owner: str, epochs: Mapping[str, int], lease_s: float) -> list[str]:
        lost = []
        for run_id, epoch in epochs.items():
            if self._holds(run_id, owner, epoch):
                self._meta[run_id]["lease"] = self._clock() + lease_s
            else:
                lost.append(run_id)
        return lost

    async def release(self, run_id: str, lease: Lease) -> None:
        if self._holds(run_id, lease.owner, lease.epoch):
            self._meta[run_id]["lease"] = 0.0

    async def request_cancel(self, run_id: str) -> bool:
        if run_id not in self._meta:
            return False
        self._meta[run_id]["cancel"] = True
        return True

    async def cancel_requested(self, run_id: str) -> bool:
        return bool(self._meta.get(run_id, {}).get("cancel"))

    async def close(self) -> None:
        pass


async def open_store(store: str, *, path: str = "", dsn: str | None = None, clock: Callable[[], float] = time.time) -> RunStore:
    """The configured backend, open and migrated."""
    if store == "memory":
        return MemoryRunStore(clock=clock)
    if store == "postgres":
        from serve_app.workflow.store_postgres import PostgresRunStore

        if not dsn:
            raise ValueError("workflows.store is postgres but no DSN is set (workflows.dsn or SERVEFLOW_DATABASE_URL)")
        return await PostgresRunStore.open(dsn, clock=clock)
    return await asyncio.to_thread(SqliteRunStore, os.path.expanduser(path), clock=clock)
