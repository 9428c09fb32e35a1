"""Where run and step state lives: a small async interface, SQLite and in-memory backends.

The engine only talks to :class:`RunStore`, so a server database can follow
without touching it. Every state change is written before the engine acts on
it (write-ahead), so a restarted Coordinator resumes from the store: finished
steps keep their results, unfinished runs are claimed again through leases.
"""

from __future__ import annotations

import asyncio
import json
import os
import sqlite3
import threading
import time
from typing import Any, Callable, Protocol, TypeVar

from serve_app.core.errors import Conflict
from serve_app.core.models import ErrorInfo
from serve_app.workflow.state import RunState, RunStatus, StepState, StepStatus

T = TypeVar("T")


class RunStore(Protocol):
    async def create_run(self, run: RunState, spec_json: str, request_hash: str, owner: str, lease_s: float) -> tuple[RunState, bool]:
        """Insert ``run`` (leased to ``owner``), or return the run already holding its idempotency key.

        Returns ``(run, created)``. Raises :class:`Conflict` when the key exists
        with a different request.
        """

    async def get_run(self, run_id: str) -> RunState | None: ...
    async def get_spec(self, run_id: str) -> str: ...
    async def list_runs(self, *, status: RunStatus | None = None, workflow: str | None = None, limit: int = 50) -> list[RunState]: ...
    async def save_run(self, run: RunState) -> None:
        """Persist run-level fields (status, output, error, times)."""

    async def save_step(self, run_id: str, step: StepState) -> None: ...
    async def claim_unfinished(self, owner: str, lease_s: float, limit: int = 100) -> list[str]:
        """Lease unfinished runs nobody holds (lease expired) to ``owner``; returns their ids."""

    async def renew(self, owner: str, run_ids: list[str], lease_s: float) -> None: ...
    async def release(self, owner: str, run_id: str) -> None: ...
    async def request_cancel(self, run_id: str) -> bool: ...
    async def cancel_requested(self, run_id: str) -> bool: ...
    def close(self) -> None: ...


_SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    run_id TEXT PRIMARY KEY,
    workflow TEXT NOT NULL,
    status TEXT NOT NULL,
    input_json TEXT NOT NULL,
    output_json TEXT,
    error_json TEXT,
    idempotency_key TEXT UNIQUE,
    request_hash TEXT NOT NULL,
    spec_json TEXT NOT NULL,
    created_at REAL NOT NULL,
    started_at REAL,
    finished_at REAL,
    trace_id TEXT,
    owner TEXT,
    lease_until REAL NOT NULL DEFAULT 0,
    cancel_requested INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS runs_status ON runs(status, created_at);
CREATE TABLE IF NOT EXISTS steps (
    run_id TEXT NOT NULL REFERENCES runs(run_id),
    position INTEGER NOT NULL,
    name TEXT NOT NULL,
    task_type TEXT NOT NULL,
    status TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    started_at REAL,
    finished_at REAL,
    result_json TEXT,
    error_json TEXT,
    PRIMARY KEY (run_id, name)
);
"""

_UNFINISHED = (RunStatus.PENDING.value, RunStatus.RUNNING.value)


def _dump(value: Any) -> str | None:
    return None if value is None else json.dumps(value)


def _error(raw: str | None) -> ErrorInfo | None:
    return None if raw is None else ErrorInfo.model_validate_json(raw)


class SqliteRunStore:
    """SQLite backend (one connection, WAL, one write transaction at a time)."""

    def __init__(self, path: str, *, clock: Callable[[], float] = time.time) -> None:
        if path != ":memory:":
            os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        self.path = path
        self._clock = clock
        self._lock = threading.Lock()
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None, timeout=30)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(_SCHEMA)

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
                        raise Conflict(
                            f"idempotency key {run.idempotency_key!r} was used for a different request",
                            details={"run_id": row[0]},
                        )
                    return row[0], False
            db.execute(
                "INSERT INTO runs (run_id, workflow, status, input_json, idempotency_key, request_hash, spec_json,"
                " created_at, trace_id, owner, lease_until) VALUES (?,?,?,?,?,?,?,?,?,?,?)",
                (
                    run.run_id,
                    run.workflow,
                    run.status.value,
                    json.dumps(run.input),
                    run.idempotency_key,
                    request_hash,
                    spec_json,
                    run.created_at,
                    run.trace_id,
                    owner,
                    self._clock() + lease_s,
                ),
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
        row = self._db.execute(
            "SELECT run_id, workflow, status, input_json, output_json, error_json, idempotency_key, created_at,"
            " started_at, finished_at, trace_id FROM runs WHERE run_id = ?",
            (run_id,),
        ).fetchone()
        if row is None:
            return None
        steps = [
            StepState(
                name=r[0],
                task_type=r[1],
                status=StepStatus(r[2]),
                attempts=r[3],
                started_at=r[4],
                finished_at=r[5],
                result=None if r[6] is None else json.loads(r[6]),
                error=_error(r[7]),
            )
            for r in self._db.execute(
                "SELECT name, task_type, status, attempts, started_at, finished_at, result_json, error_json"
                " FROM steps WHERE run_id = ? ORDER BY position",
                (run_id,),
            )
        ]
        return RunState(
            run_id=row[0],
            workflow=row[1],
            status=RunStatus(row[2]),
            input=json.loads(row[3]),
            output=None if row[4] is None else json.loads(row[4]),
            error=_error(row[5]),
            idempotency_key=row[6],
            created_at=row[7],
            started_at=row[8],
            finished_at=row[9],
            trace_id=row[10],
            steps=steps,
        )

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
            ids = [r[0] for r in self._db.execute(f"SELECT run_id FROM runs {where} ORDER BY created_at DESC LIMIT ?", (*params, limit))]
            return [run for run in (self._load(i) for i in ids) if run is not None]

        return await self._io(op)

    async def save_run(self, run: RunState) -> None:
        await self._io(
            lambda: self._db.execute(
                "UPDATE runs SET status=?, output_json=?, error_json=?, started_at=?, finished_at=? WHERE run_id=?",
                (
                    run.status.value,
                    _dump(run.output),
                    None if run.error is None else run.error.model_dump_json(),
                    run.started_at,
                    run.finished_at,
                    run.run_id,
                ),
            )
        )

    async def save_step(self, run_id: str, step: StepState) -> None:
        await self._io(
            lambda: self._db.execute(
                "UPDATE steps SET status=?, attempts=?, started_at=?, finished_at=?, result_json=?, error_json=?"
                " WHERE run_id=? AND name=?",
                (
                    step.status.value,
                    step.attempts,
                    step.started_at,
                    step.finished_at,
                    _dump(step.result),
                    None if step.error is None else step.error.model_dump_json(),
                    run_id,
                    step.name,
                ),
            )
        )

    async def claim_unfinished(self, owner: str, lease_s: float, limit: int = 100) -> list[str]:
        def op(db: sqlite3.Connection) -> list[str]:
            now = self._clock()
            ids = [
                r[0]
                for r in db.execute(
                    "SELECT run_id FROM runs WHERE status IN (?, ?) AND (lease_until < ? OR owner = ?)"
                    " ORDER BY created_at LIMIT ?",
                    (*_UNFINISHED, now, owner, limit),
                )
            ]
            db.executemany("UPDATE runs SET owner=?, lease_until=? WHERE run_id=?", [(owner, now + lease_s, i) for i in ids])
            return ids

        return await self._io(lambda: self._tx(op))

    async def renew(self, owner: str, run_ids: list[str], lease_s: float) -> None:
        until = self._clock() + lease_s
        await self._io(
            lambda: self._db.executemany(
                "UPDATE runs SET lease_until=? WHERE run_id=? AND owner=?", [(until, i, owner) for i in run_ids]
            )
        )

    async def release(self, owner: str, run_id: str) -> None:
        await self._io(lambda: self._db.execute("UPDATE runs SET lease_until=0 WHERE run_id=? AND owner=?", (run_id, owner)))

    async def request_cancel(self, run_id: str) -> bool:
        cur = await self._io(lambda: self._db.execute("UPDATE runs SET cancel_requested=1 WHERE run_id=?", (run_id,)))
        return cur.rowcount > 0

    async def cancel_requested(self, run_id: str) -> bool:
        row = await self._io(lambda: self._db.execute("SELECT cancel_requested FROM runs WHERE run_id=?", (run_id,)).fetchone())
        return bool(row and row[0])

    def close(self) -> None:
        with self._lock:
            self._db.close()


class MemoryRunStore:
    """In-process backend: same semantics, nothing survives a restart ("persistence off")."""

    def __init__(self, *, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._runs: dict[str, RunState] = {}
        self._meta: dict[str, dict[str, Any]] = {}
        self._keys: dict[str, str] = {}

    async def create_run(self, run: RunState, spec_json: str, request_hash: str, owner: str, lease_s: float) -> tuple[RunState, bool]:
        if run.idempotency_key is not None and run.idempotency_key in self._keys:
            existing = self._keys[run.idempotency_key]
            if self._meta[existing]["hash"] != request_hash:
                raise Conflict(
                    f"idempotency key {run.idempotency_key!r} was used for a different request", details={"run_id": existing}
                )
            return self._runs[existing].model_copy(deep=True), False
        self._runs[run.run_id] = run.model_copy(deep=True)
        self._meta[run.run_id] = {
            "hash": request_hash,
            "spec": spec_json,
            "owner": owner,
            "lease": self._clock() + lease_s,
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

    async def save_run(self, run: RunState) -> None:
        stored = self._runs[run.run_id]
        self._runs[run.run_id] = stored.model_copy(
            update={k: getattr(run, k) for k in ("status", "output", "error", "started_at", "finished_at")}, deep=True
        )

    async def save_step(self, run_id: str, step: StepState) -> None:
        run = self._runs[run_id]
        run.steps = [step.model_copy(deep=True) if s.name == step.name else s for s in run.steps]

    async def claim_unfinished(self, owner: str, lease_s: float, limit: int = 100) -> list[str]:
        now = self._clock()
        ids = [
            i
            for i, r in sorted(self._runs.items(), key=lambda kv: kv[1].created_at)
            if r.status.value in _UNFINISHED and (self._meta[i]["lease"] < now or self._meta[i]["owner"] == owner)
        ][:limit]
        for i in ids:
            self._meta[i].update(owner=owner, lease=now + lease_s)
        return ids

    async def renew(self, owner: str, run_ids: list[str], lease_s: float) -> None:
        for i in run_ids:
            if self._meta.get(i, {}).get("owner") == owner:
                self._meta[i]["lease"] = self._clock() + lease_s

    async def release(self, owner: str, run_id: str) -> None:
        if self._meta.get(run_id, {}).get("owner") == owner:
            self._meta[run_id]["lease"] = 0.0

    async def request_cancel(self, run_id: str) -> bool:
        if run_id not in self._meta:
            return False
        self._meta[run_id]["cancel"] = True
        return True

    async def cancel_requested(self, run_id: str) -> bool:
        return bool(self._meta.get(run_id, {}).get("cancel"))

    def close(self) -> None:
        pass


def open_store(store: str, path: str) -> RunStore:
    """The configured backend (blocking: opens the SQLite file)."""
    if store == "memory":
        return MemoryRunStore()
    return SqliteRunStore(os.path.expanduser(path))
