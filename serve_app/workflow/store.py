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
from serve_app.workflow.group_commit import GroupCommit, WalCheckpointer, fits_inline, transaction
from serve_app.workflow.migrations import SQLITE_MIGRATIONS, migrate_sqlite
from serve_app.workflow.state import FAILED_ITEMS_SHOWN, MapProgress, RunState, RunStatus, StepState, StepStatus

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
    async def list_runs(
        self,
        *,
        status: RunStatus | None = None,
        workflow: str | None = None,
        parent_run_id: str | None = None,
        limit: int = 50,
        before: float | None = None,
    ) -> list[RunState]:
        """Newest first; ``before`` pages: only runs created before that time."""
    async def save_run(self, run: RunState, lease: Lease, *, release: bool = False, steps: Sequence[StepState] = ()) -> None:
        """Persist run-level fields (status, output, error, times); :class:`LeaseLost` if not
        ``lease``'s. ``release``: in the same write, give the lease up (a run that ended).
        ``steps``: step records written with it (in the same commit where the store can, never
        after it)."""

    async def save_step(self, run_id: str, step: StepState, lease: Lease) -> None:
        """Persist one step; :class:`LeaseLost` if the run is not ``lease``'s."""

    async def save_steps(self, run_id: str, steps: Sequence[StepState], lease: Lease) -> None:
        """Persist several steps of one run, in one commit where the store can; :class:`LeaseLost`
        if the run is not ``lease``'s."""

    async def claim_unfinished(self, owner: str, lease_s: float, limit: int = 100) -> list[tuple[str, int]]:
        """Lease unfinished runs whose lease expired to ``owner``, each at a new epoch; returns
        ``(run_id, epoch)`` pairs. Never re-claims a run ``owner`` released or still holds."""

    async def renew(self, owner: str, epochs: Mapping[str, int], lease_s: float) -> list[str]:
        """Extend the leases held at these epochs; returns the run ids whose lease was lost."""

    async def release(self, run_id: str, lease: Lease) -> None:
        """Give the run up so the next claimant takes it at once (no-op if not ours)."""

    async def request_cancel(self, run_id: str) -> bool: ...
    async def cancel_requested(self, run_id: str) -> bool: ...

    async def save_items(self, run_id: str, step: str, items: Sequence[ItemOutcome], lease: Lease) -> None:
        """Record finished map elements (one batch, one transaction); :class:`LeaseLost` if not ``lease``'s."""

    async def load_items(self, run_id: str, step: str) -> dict[int, ItemOutcome]:
        """The finished elements of a map step, by index."""

    async def admit(self, key: str, max_runs: int, owner: str, lease_s: float) -> list[tuple[str, int]]:
        """Promote queued runs of concurrency ``key`` while fewer than ``max_runs`` are pending or
        running (highest priority first, then oldest), leasing each to ``owner`` at a new epoch.
        Serialized per key across replicas. Returns ``(run_id, epoch)`` pairs."""

    async def queued_keys(self) -> list[str]:
        """Concurrency keys that have queued runs."""

    async def cancel_queued(self, run_id: str, error: ErrorInfo, at: float) -> bool:
        """End a run that is still queued as cancelled (nobody drives it); False if it is not queued."""

    async def park(self, run_id: str, wake_at: float, signals: Sequence[str], lease: Lease) -> None:
        """Give the run up until ``wake_at`` (it is claimed again then, or sooner when woken):
        a run waiting for time or a signal holds no lease and no Coordinator task. If one of
        ``signals`` (the names its steps wait for) is already there, it is claimable at once."""

    async def wake(self, run_id: str) -> bool:
        """Make a parked run claimable now (a signal came, or a cancel)."""

    async def add_signal(self, run_id: str, name: str, signal_id: str, payload: Any, at: float) -> bool:
        """Keep a signal for the run (whether or not a step waits for it yet) and wake the run;
        False when ``signal_id`` was already received (a duplicate, ignored)."""

    async def has_signal(self, run_id: str, signal_id: str) -> bool: ...

    async def take_signal(self, run_id: str, name: str, step: str, lease: Lease) -> tuple[bool, Any]:
        """The oldest unconsumed ``name`` signal, now consumed by ``step`` (or the one ``step``
        consumed before a restart): ``(True, payload)``, or ``(False, None)`` if none came yet."""

    async def schedule_states(self) -> dict[str, tuple[bool, float | None]]:
        """Each schedule's (paused, last tick handled)."""

    async def init_schedule(self, name: str, last_tick: float) -> None:
        """Record a schedule first seen (ticks before ``last_tick`` are not its)."""

    async def advance_schedule(self, name: str, expected: float, last_tick: float) -> bool:
        """Compare-and-set the last tick: only one Coordinator handles a tick."""

    async def set_schedule_paused(self, name: str, paused: bool) -> None: ...

    async def unfinished_with_key_prefix(self, prefix: str) -> int:
        """Unfinished runs whose idempotency key starts with ``prefix`` (a schedule's runs)."""

    # Events: an append-only log; subscriptions read it from their own durable position.
    async def append_event(self, event_id: str, type: str, key: str | None, payload: Any, at: float) -> tuple[Event, bool]:
        """Append (or find, by id: a duplicate appends nothing) an event; ``(event, created)``."""

    async def read_events(self, after: int, types: Sequence[str] | None, limit: int) -> list[Event]: ...
    async def claim_subscription(self, name: str, owner: str, lease_s: float) -> tuple[int, int, float] | None:
        """Lease the subscription to ``owner`` (one deliverer at a time); its (position, attempts,
        retry_at), or None when another owner holds it."""

    async def advance_subscription(
        self, name: str, owner: str, position: int, attempts: int, retry_at: float, last_error: str | None
    ) -> bool: ...
    async def add_dead_letter(self, subscription: str, seq: int, attempts: int, error: ErrorInfo, at: float) -> None: ...
    async def list_dead_letters(self, subscription: str | None, limit: int, seq: int | None = None) -> list[dict[str, Any]]:
        """Newest first; ``seq`` picks the dead letter of one event."""
    async def mark_replayed(self, subscription: str, seq: int, at: float) -> None: ...
    async def subscription_lag(self, name: str, types: Sequence[str]) -> tuple[int, int]:
        """(position, events of ``types`` after it)."""

    async def close(self) -> None: ...


@dataclass(frozen=True)
class Event:
    seq: int
    event_id: str
    type: str
    key: str | None
    payload: Any
    appended_at: float

    def public(self) -> dict[str, Any]:
        return {"seq": self.seq, "id": self.event_id, "type": self.type, "key": self.key, "payload": self.payload, "appended_at": self.appended_at}


EVENT_COLUMNS = "seq, event_id, type, key, payload_json, appended_at"
APPEND_EVENT_SQL = (
    "INSERT INTO events (event_id, type, key, payload_json, appended_at) VALUES ({p}, {p}, {p}, {p}, {p})"
    " ON CONFLICT (event_id) DO NOTHING"
)
EVENT_BY_ID_SQL = f"SELECT {EVENT_COLUMNS} FROM events WHERE event_id={{p}}"
INIT_SUBSCRIPTION_SQL = "INSERT INTO subscriptions (name) VALUES ({p}) ON CONFLICT (name) DO NOTHING"
CLAIM_SUBSCRIPTION_SQL = (
    "UPDATE subscriptions SET owner={p}, lease_until={p} WHERE name={p} AND (owner={p} OR lease_until < {p})"
)
SUBSCRIPTION_SQL = "SELECT position, attempts, retry_at FROM subscriptions WHERE name={p}"
ADVANCE_SUBSCRIPTION_SQL = (
    "UPDATE subscriptions SET position={p}, attempts={p}, retry_at={p}, last_error={p} WHERE name={p} AND owner={p}"
)
DEAD_LETTER_SQL = (
    "INSERT INTO dead_letters (subscription, seq, attempts, error_json, dead_at) VALUES ({p}, {p}, {p}, {p}, {p})"
    " ON CONFLICT (subscription, seq) DO UPDATE SET attempts=excluded.attempts, error_json=excluded.error_json,"
    " dead_at=excluded.dead_at, replayed_at=NULL"
)
LIST_DEAD_LETTERS_SQL = (
    "SELECT d.subscription, d.attempts, d.error_json, d.dead_at, d.replayed_at, e.seq, e.event_id, e.type, e.key,"
    " e.payload_json, e.appended_at FROM dead_letters d JOIN events e ON e.seq = d.seq"
    " WHERE (CAST({p} AS TEXT) IS NULL OR d.subscription = {p}) AND (CAST({p} AS BIGINT) IS NULL OR d.seq = {p})"
    " ORDER BY d.dead_at DESC, d.seq DESC LIMIT {p}"
)
REPLAYED_SQL = "UPDATE dead_letters SET replayed_at={p} WHERE subscription={p} AND seq={p}"


def read_events_sql(p: str, types: int) -> str:
    of_type = f" AND type IN ({', '.join([p] * types)})" if types else ""
    return f"SELECT {EVENT_COLUMNS} FROM events WHERE seq > {p}{of_type} ORDER BY seq LIMIT {p}"


def lag_sql(p: str, types: int) -> str:
    return (
        f"SELECT COUNT(*) FROM events WHERE seq > {p} AND type IN ({', '.join([p] * types)})" if types else "SELECT 0"
    )


def event_from_row(r: Sequence[Any]) -> Event:
    return Event(seq=int(r[0]), event_id=r[1], type=r[2], key=r[3], payload=jsonio.load_stored(r[4]), appended_at=r[5])


def dead_letter_from_row(r: Sequence[Any]) -> dict[str, Any]:
    err = _error(r[2])
    return {
        "subscription": r[0],
        "attempts": r[1],
        "error": err.model_dump(mode="json") if err else None,
        "dead_at": r[3],
        "replayed_at": r[4],
        "event": event_from_row(r[5:]).public(),
    }


@dataclass(frozen=True)
class ItemOutcome:
    """One finished element of a map step."""

    index: int
    status: StepStatus  # SUCCEEDED or FAILED
    attempts: int
    result: Any = None
    error: ErrorInfo | None = None


_UNFINISHED = (RunStatus.PENDING.value, RunStatus.RUNNING.value)


def dump_json(value: Any) -> str | None:
    return None if value is None else jsonio.dumps(value)



def _error(raw: str | None) -> ErrorInfo | None:
    return None if raw is None else ErrorInfo.model_validate(jsonio.load_stored(raw))


def _error_json(error: ErrorInfo | None) -> str | None:
    return None if error is None else error.model_dump_json()


# The columns every SQL backend reads a run and its steps with, and how a row becomes state.
RUN_COLUMNS = (
    "run_id, workflow, status, input_json, output_json, error_json, idempotency_key, created_at, started_at, finished_at,"
    " trace_id, parent_run_id, parent_step, concurrency_key, priority"
)
STEP_COLUMNS = "name, task_type, status, attempts, started_at, finished_at, result_json, error_json, detail_json"
# Fenced run updates, the same SQL on every backend but for the placeholder ({p}: ? or %s).
RUN_FENCE = " WHERE run_id={p} AND owner={p} AND lease_epoch={p}"
SAVE_RUN_SET = "status={p}, output_json={p}, error_json={p}, started_at={p}, finished_at={p}"
RELEASE_SQL = "UPDATE runs SET lease_until=0" + RUN_FENCE
STEP_UPDATE_SET = "status={p}, attempts={p}, started_at={p}, finished_at={p}, result_json={p}, error_json={p}, detail_json={p}"
SAVE_ITEM_SQL = (
    "INSERT INTO map_items (run_id, step, idx, status, attempts, result_json, error_json, finished_at)"
    " VALUES ({p}, {p}, {p}, {p}, {p}, {p}, {p}, {p}) ON CONFLICT (run_id, step, idx) DO UPDATE SET"
    " status=excluded.status, attempts=excluded.attempts, result_json=excluded.result_json,"
    " error_json=excluded.error_json, finished_at=excluded.finished_at"
)
LOAD_ITEMS_SQL = "SELECT idx, status, attempts, result_json, error_json FROM map_items WHERE run_id={p} AND step={p}"
# Concurrency keys: what holds a slot, what is next, and a queued run's place in line.
ACTIVE_FOR_KEY_SQL = "SELECT COUNT(*) FROM runs WHERE concurrency_key={p} AND status IN ('pending', 'running')"
NEXT_QUEUED_SQL = (
    "SELECT run_id, lease_epoch FROM runs WHERE concurrency_key={p} AND status='queued'"
    " ORDER BY priority DESC, created_at, run_id LIMIT {p}"
)
PROMOTE_SQL = "UPDATE runs SET status='pending', owner={p}, lease_until={p}, lease_epoch={p} WHERE run_id={p} AND status='queued'"
QUEUED_KEYS_SQL = "SELECT DISTINCT concurrency_key FROM runs WHERE status='queued' AND concurrency_key IS NOT NULL"
QUEUE_AHEAD_SQL = (
    "SELECT COUNT(*) FROM runs WHERE concurrency_key={p} AND status='queued' AND (priority > {p} OR (priority = {p}"
    " AND (created_at < {p} OR (created_at = {p} AND run_id < {p}))))"
)


def save_run_sql(p: str, release: bool) -> str:
    """The fenced run update (and, with ``release``, the lease given up in the same statement)."""
    return ("UPDATE runs SET " + SAVE_RUN_SET + (", lease_until=0" if release else "") + RUN_FENCE).format(p=p)


def park_sql(p: str, signals: int) -> str:
    """Park a run; it wakes at once if a signal it waits for came meanwhile. A signal is stored
    (committed) before its run is woken, so either this statement sees it or the wake sees the park."""
    names = f"signals.name IN ({', '.join([p] * signals)})" if signals else "FALSE"
    return (
        "UPDATE runs SET lease_until=0, wake_at = CASE WHEN EXISTS (SELECT 1 FROM signals WHERE signals.run_id = runs.run_id"
        f" AND signals.consumed_by IS NULL AND {names}) THEN 0 ELSE {p} END"
        + RUN_FENCE.format(p=p)
    )


WAKE_SQL = "UPDATE runs SET wake_at=0 WHERE run_id={p} AND wake_at IS NOT NULL"
ADD_SIGNAL_SQL = (
    "INSERT INTO signals (run_id, signal_id, name, payload_json, received_at) VALUES ({p}, {p}, {p}, {p}, {p})"
    " ON CONFLICT (run_id, signal_id) DO NOTHING"
)
TAKEN_SIGNAL_SQL = "SELECT payload_json FROM signals WHERE run_id={p} AND consumed_by={p}"
NEXT_SIGNAL_SQL = (
    "SELECT signal_id, payload_json FROM signals WHERE run_id={p} AND name={p} AND consumed_by IS NULL"
    " ORDER BY received_at, signal_id LIMIT 1"
)
HAS_SIGNAL_SQL = "SELECT 1 FROM signals WHERE run_id={p} AND signal_id={p}"
CONSUME_SIGNAL_SQL = "UPDATE signals SET consumed_by={p} WHERE run_id={p} AND signal_id={p}"
SCHEDULE_STATES_SQL = "SELECT name, paused, last_tick FROM schedules"
INIT_SCHEDULE_SQL = "INSERT INTO schedules (name, paused, last_tick) VALUES ({p}, 0, {p}) ON CONFLICT (name) DO NOTHING"
ADVANCE_SCHEDULE_SQL = "UPDATE schedules SET last_tick={p} WHERE name={p} AND last_tick={p}"
PAUSE_SCHEDULE_SQL = "UPDATE schedules SET paused={p} WHERE name={p}"
UNFINISHED_PREFIX_SQL = (
    "SELECT COUNT(*) FROM runs WHERE idempotency_key LIKE {p} ESCAPE '\\' AND status IN ('queued', 'pending', 'running')"
)


def like_prefix(prefix: str) -> str:
    """A LIKE pattern matching keys that start with ``prefix`` (its _ and % taken literally)."""
    return prefix.replace("\\", "\\\\").replace("_", "\\_").replace("%", "\\%") + "%"


# Claimable: unfinished, lease lapsed, and not parked until later.
CLAIMABLE = "status IN ({p}, {p}) AND lease_until < {p} AND (wake_at IS NULL OR wake_at <= {p})"
CANCEL_QUEUED_SQL = "UPDATE runs SET status='cancelled', error_json={p}, finished_at={p} WHERE run_id={p} AND status='queued'"


def progress_sql(ids_clause: str) -> tuple[str, str]:
    """Map progress of the runs ``ids_clause`` selects (``IN (?,?)`` / ``= ANY(%s)``): element
    counts by step and status, and the first failed elements of each step."""
    counts = f"SELECT run_id, step, status, COUNT(*) FROM map_items WHERE run_id {ids_clause} GROUP BY run_id, step, status"
    failed = (
        "SELECT run_id, step, idx, error_json FROM (SELECT run_id, step, idx, error_json, ROW_NUMBER() OVER"
        f" (PARTITION BY run_id, step ORDER BY idx) AS rn FROM map_items WHERE run_id {ids_clause} AND status='failed')"
        f" AS f WHERE rn <= {FAILED_ITEMS_SHOWN} ORDER BY run_id, step, idx"
    )
    return counts, failed


def item_row(run_id: str, step: str, item: ItemOutcome, at: float) -> tuple[Any, ...]:
    return (run_id, step, item.index, item.status.value, item.attempts, dump_json(item.result), _error_json(item.error), at)


def item_from_row(r: Sequence[Any]) -> ItemOutcome:
    return ItemOutcome(index=r[0], status=StepStatus(r[1]), attempts=r[2], result=jsonio.load_stored(r[3]), error=_error(r[4]))


def attach_progress(runs: Iterable[RunState], counts: Iterable[Sequence[Any]], failed: Iterable[Sequence[Any]]) -> None:
    """Fill each map step's progress from the rows of :func:`progress_sql`."""
    steps = {(run.run_id, st.name): st for run in runs for st in run.steps if st.map is not None}
    for run_id, step, status, n in counts:
        st = steps.get((run_id, step))
        if st is not None and st.map is not None:
            if status == StepStatus.SUCCEEDED.value:
                st.map.succeeded = n
            else:
                st.map.failed = n
    for run_id, step, idx, error_json in failed:
        st = steps.get((run_id, step))
        if st is not None and st.map is not None:
            err = _error(error_json)
            st.map.failed_items.append({"index": idx, "error": err.model_dump(mode="json") if err else None})


def queue_ahead_params(run: RunState) -> tuple[Any, ...]:
    """Parameters of :data:`QUEUE_AHEAD_SQL` for a queued run."""
    return (run.concurrency_key, run.priority, run.priority, run.created_at, run.created_at, run.run_id)


def has_maps(runs: Iterable[RunState]) -> bool:
    return any(st.map is not None for run in runs for st in run.steps)


def step_detail(step: StepState) -> str | None:
    """What a step keeps beside its result: a map's size and a child run's id."""
    detail: dict[str, Any] = {}
    if step.map is not None:
        detail["map_total"] = step.map.total
    if step.child_run_id is not None:
        detail["child_run_id"] = step.child_run_id
    if step.wake_at is not None:
        detail["wake_at"] = step.wake_at
    return jsonio.dumps(detail) if detail else None


def step_from_row(r: Sequence[Any]) -> StepState:
    detail = jsonio.load_stored(r[8]) if r[8] else {}
    detail = detail if isinstance(detail, dict) else {}
    total = detail.get("map_total")
    child = detail.get("child_run_id")
    wake_at = detail.get("wake_at")
    return StepState(
        name=r[0],
        task_type=r[1],
        status=StepStatus(r[2]),
        attempts=r[3],
        started_at=r[4],
        finished_at=r[5],
        result=jsonio.load_stored(r[6]),
        error=_error(r[7]),
        map=MapProgress(total=total) if isinstance(total, int) else None,
        child_run_id=child if isinstance(child, str) else None,
        wake_at=float(wake_at) if isinstance(wake_at, (int, float)) and not isinstance(wake_at, bool) else None,
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
        parent_run_id=row[11],
        parent_step=row[12],
        concurrency_key=row[13],
        priority=row[14],
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
        spec_json, run.created_at, run.trace_id, owner, lease_until, 1, run.parent_run_id, run.parent_step,
        run.concurrency_key, run.priority,
    )


INSERT_RUN_COLUMNS = (
    "run_id, workflow, status, input_json, idempotency_key, request_hash, spec_json, created_at, trace_id, owner,"
    " lease_until, lease_epoch, parent_run_id, parent_step, concurrency_key, priority"
)
INSERT_RUN_VALUES = len(INSERT_RUN_COLUMNS.split(","))


def conflict(key: str, run_id: str) -> Conflict:
    """The one wording for an idempotency key reused with another request (every backend)."""
    return Conflict(f"idempotency key {key!r} was used for a different request", details={"run_id": run_id})


def step_row_values(step: StepState) -> tuple[Any, ...]:
    """The values of :data:`STEP_UPDATE_SET`."""
    return (
        step.status.value, step.attempts, step.started_at, step.finished_at, dump_json(step.result), _error_json(step.error),
        step_detail(step),
    )


def run_row_values(run: RunState) -> tuple[Any, ...]:
    """status, output_json, error_json, started_at, finished_at of a run update."""
    return (run.status.value, dump_json(run.output), _error_json(run.error), run.started_at, run.finished_at)


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
        # Checkpoints run beside the writes, never inside one (group_commit.py).
        self._checkpointer = None if path == ":memory:" else WalCheckpointer(path)
        if self._checkpointer is not None:
            self._db.execute("PRAGMA wal_autocheckpoint=0")
        migrate_sqlite(self._db, SQLITE_MIGRATIONS)
        self._writes = GroupCommit(self._db, self._lock, checkpointer=self._checkpointer)

    async def _io(self, fn: Callable[[], T], *, now: bool = False) -> T:
        """``fn()`` on the connection (:meth:`GroupCommit.run`). ``now`` for a run's creation and
        its read-back: a thread hop each on every run, while the JSON work holds the GIL either
        way and a read never waits in WAL mode."""
        return await self._writes.run(fn, now=now)

    def _tx(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        return transaction(self._db, fn)

    async def create_run(self, run: RunState, spec_json: str, request_hash: str, owner: str, lease_s: float) -> tuple[RunState, bool]:
        run_row = new_run_row(run, spec_json, request_hash, owner, self._clock() + lease_s)
        step_rows = [(run.run_id, i, s.name, s.task_type, s.status.value) for i, s in enumerate(run.steps)]

        def op(db: sqlite3.Connection) -> tuple[str, bool]:
            if run.idempotency_key is not None:
                row = db.execute(
                    "SELECT run_id, request_hash FROM runs WHERE idempotency_key = ?", (run.idempotency_key,)
                ).fetchone()
                if row is not None:
                    if row[1] != request_hash:
                        raise conflict(run.idempotency_key, row[0])
                    return row[0], False
            db.execute(f"INSERT INTO runs ({INSERT_RUN_COLUMNS}) VALUES ({','.join('?' * INSERT_RUN_VALUES)})", run_row)
            db.executemany("INSERT INTO steps (run_id, position, name, task_type, status) VALUES (?,?,?,?,?)", step_rows)
            return run.run_id, True

        run_id, created = await self._io(lambda: self._tx(op), now=fits_inline([run_row, *step_rows]))
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
        run = run_from_row(row, steps)
        self._complete([run])
        return run

    def _complete(self, runs: list[RunState]) -> None:
        """Add what is derived on read: map progress and queue positions."""
        if has_maps(runs):
            ids = [r.run_id for r in runs]
            counts, failed = progress_sql(f"IN ({','.join('?' * len(ids))})")
            attach_progress(runs, self._db.execute(counts, ids).fetchall(), self._db.execute(failed, ids).fetchall())
        for run in runs:
            if run.status is RunStatus.QUEUED:
                ahead = self._db.execute(QUEUE_AHEAD_SQL.format(p="?"), queue_ahead_params(run)).fetchone()[0]
                run.queue_position = ahead + 1

    async def get_run(self, run_id: str) -> RunState | None:
        return await self._io(lambda: self._load(run_id), now=True)

    async def get_spec(self, run_id: str) -> str:
        row = await self._io(lambda: self._db.execute("SELECT spec_json FROM runs WHERE run_id = ?", (run_id,)).fetchone())
        if row is None:
            raise KeyError(run_id)
        return str(row[0])

    async def list_runs(
        self,
        *,
        status: RunStatus | None = None,
        workflow: str | None = None,
        parent_run_id: str | None = None,
        limit: int = 50,
        before: float | None = None,
    ) -> list[RunState]:
        def op() -> list[RunState]:
            clauses: list[str] = []
            params: list[Any] = []
            for clause, value in (
                ("status = ?", status.value if status else None),
                ("workflow = ?", workflow),
                ("parent_run_id = ?", parent_run_id),
                ("created_at < ?", before),
            ):
                if value is not None:
                    clauses.append(clause)
                    params.append(value)
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
            runs = [run_from_row(r, steps.get(r[0], [])) for r in rows]
            self._complete(runs)
            return runs

        return await self._io(op)

    async def _fenced(self, run_id: str, lease: Lease, *statements: tuple[str, tuple[Any, ...]]) -> None:
        """Run UPDATEs of ``run_id``, each only while ``lease`` holds it (one statement, no race),
        queued together and committed with whatever other such writes are waiting (group commit)."""
        if 0 in await self._writes.execute_many(list(statements)):
            raise LeaseLost(run_id, lease)

    _HELD = "SELECT 1 FROM runs WHERE run_id=? AND owner=? AND lease_epoch=?"

    async def save_run(self, run: RunState, lease: Lease, *, release: bool = False, steps: Sequence[StepState] = ()) -> None:
        params = (*run_row_values(run), run.run_id, lease.owner, lease.epoch)
        await self._fenced(run.run_id, lease, *self._step_writes(run.run_id, steps, lease), (save_run_sql("?", release), params))

    _SAVE_STEP = f"UPDATE steps SET {STEP_UPDATE_SET.format(p='?')} WHERE run_id=? AND name=? AND EXISTS ({_HELD})"

    async def save_step(self, run_id: str, step: StepState, lease: Lease) -> None:
        await self.save_steps(run_id, [step], lease)

    async def save_steps(self, run_id: str, steps: Sequence[StepState], lease: Lease) -> None:
        await self._fenced(run_id, lease, *self._step_writes(run_id, steps, lease))

    def _step_writes(self, run_id: str, steps: Sequence[StepState], lease: Lease) -> list[tuple[str, tuple[Any, ...]]]:
        held = (run_id, lease.owner, lease.epoch)
        return [(self._SAVE_STEP, (*step_row_values(st), run_id, st.name, *held)) for st in steps]

    async def claim_unfinished(self, owner: str, lease_s: float, limit: int = 100) -> list[tuple[str, int]]:
        def op(db: sqlite3.Connection) -> list[tuple[str, int]]:
            now = self._clock()
            rows = db.execute(
                f"SELECT run_id, lease_epoch FROM runs WHERE {CLAIMABLE.format(p='?')} ORDER BY created_at LIMIT ?",
                (*_UNFINISHED, now, now, limit),
            ).fetchall()
            claimed = [(run_id, epoch + 1) for run_id, epoch in rows]
            db.executemany(
                "UPDATE runs SET owner=?, lease_until=?, lease_epoch=?, wake_at=NULL WHERE run_id=?",
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

    async def save_items(self, run_id: str, step: str, items: Sequence[ItemOutcome], lease: Lease) -> None:
        at = self._clock()
        rows = [item_row(run_id, step, item, at) for item in items]

        def op(db: sqlite3.Connection) -> None:
            if db.execute(self._HELD, (run_id, lease.owner, lease.epoch)).fetchone() is None:
                raise LeaseLost(run_id, lease)
            db.executemany(SAVE_ITEM_SQL.format(p="?"), rows)

        await self._io(lambda: self._tx(op), now=fits_inline(rows))

    async def load_items(self, run_id: str, step: str) -> dict[int, ItemOutcome]:
        rows = await self._io(lambda: self._db.execute(LOAD_ITEMS_SQL.format(p="?"), (run_id, step)).fetchall())
        return {r[0]: item_from_row(r) for r in rows}

    async def admit(self, key: str, max_runs: int, owner: str, lease_s: float) -> list[tuple[str, int]]:
        def op(db: sqlite3.Connection) -> list[tuple[str, int]]:  # BEGIN IMMEDIATE: one admitter at a time
            free = max_runs - db.execute(ACTIVE_FOR_KEY_SQL.format(p="?"), (key,)).fetchone()[0]
            if free <= 0:
                return []
            rows = db.execute(NEXT_QUEUED_SQL.format(p="?"), (key, free)).fetchall()
            until = self._clock() + lease_s
            db.executemany(PROMOTE_SQL.format(p="?"), [(owner, until, epoch + 1, run_id) for run_id, epoch in rows])
            return [(run_id, epoch + 1) for run_id, epoch in rows]

        return await self._io(lambda: self._tx(op))

    async def queued_keys(self) -> list[str]:
        return [r[0] for r in await self._io(lambda: self._db.execute(QUEUED_KEYS_SQL).fetchall())]

    async def park(self, run_id: str, wake_at: float, signals: Sequence[str], lease: Lease) -> None:
        params = (*signals, wake_at, run_id, lease.owner, lease.epoch)
        await self._fenced(run_id, lease, (park_sql("?", len(signals)), params))

    async def append_event(self, event_id: str, type: str, key: str | None, payload: Any, at: float) -> tuple[Event, bool]:
        def op(db: sqlite3.Connection) -> tuple[Event, bool]:
            created = db.execute(APPEND_EVENT_SQL.format(p="?"), (event_id, type, key, dump_json(payload), at)).rowcount > 0
            return event_from_row(db.execute(EVENT_BY_ID_SQL.format(p="?"), (event_id,)).fetchone()), created

        return await self._io(lambda: self._tx(op))

    async def read_events(self, after: int, types: Sequence[str] | None, limit: int) -> list[Event]:
        sql = read_events_sql("?", len(types or ()))
        rows = await self._io(lambda: self._db.execute(sql, (after, *(types or ()), limit)).fetchall())
        return [event_from_row(r) for r in rows]

    async def claim_subscription(self, name: str, owner: str, lease_s: float) -> tuple[int, int, float] | None:
        def op(db: sqlite3.Connection) -> tuple[int, int, float] | None:
            now = self._clock()
            db.execute(INIT_SUBSCRIPTION_SQL.format(p="?"), (name,))
            if db.execute(CLAIM_SUBSCRIPTION_SQL.format(p="?"), (owner, now + lease_s, name, owner, now)).rowcount == 0:
                return None
            row = db.execute(SUBSCRIPTION_SQL.format(p="?"), (name,)).fetchone()
            return int(row[0]), int(row[1]), float(row[2])

        return await self._io(lambda: self._tx(op))

    async def advance_subscription(
        self, name: str, owner: str, position: int, attempts: int, retry_at: float, last_error: str | None
    ) -> bool:
        params = (position, attempts, retry_at, last_error, name, owner)
        cur = await self._io(lambda: self._db.execute(ADVANCE_SUBSCRIPTION_SQL.format(p="?"), params))
        return cur.rowcount > 0

    async def add_dead_letter(self, subscription: str, seq: int, attempts: int, error: ErrorInfo, at: float) -> None:
        params = (subscription, seq, attempts, error.model_dump_json(), at)
        await self._io(lambda: self._db.execute(DEAD_LETTER_SQL.format(p="?"), params))

    async def list_dead_letters(self, subscription: str | None, limit: int, seq: int | None = None) -> list[dict[str, Any]]:
        params = (subscription, subscription, seq, seq, limit)
        rows = await self._io(lambda: self._db.execute(LIST_DEAD_LETTERS_SQL.format(p="?"), params).fetchall())
        return [dead_letter_from_row(r) for r in rows]

    async def mark_replayed(self, subscription: str, seq: int, at: float) -> None:
        await self._io(lambda: self._db.execute(REPLAYED_SQL.format(p="?"), (at, subscription, seq)))

    async def subscription_lag(self, name: str, types: Sequence[str]) -> tuple[int, int]:
        def op() -> tuple[int, int]:
            row = self._db.execute(SUBSCRIPTION_SQL.format(p="?"), (name,)).fetchone()
            position = int(row[0]) if row else 0
            return position, int(self._db.execute(lag_sql("?", len(types)), (position, *types) if types else ()).fetchone()[0])

        return await self._io(op)

    async def schedule_states(self) -> dict[str, tuple[bool, float | None]]:
        rows = await self._io(lambda: self._db.execute(SCHEDULE_STATES_SQL).fetchall())
        return {r[0]: (bool(r[1]), r[2]) for r in rows}

    async def init_schedule(self, name: str, last_tick: float) -> None:
        await self._io(lambda: self._db.execute(INIT_SCHEDULE_SQL.format(p="?"), (name, last_tick)))

    async def advance_schedule(self, name: str, expected: float, last_tick: float) -> bool:
        cur = await self._io(lambda: self._db.execute(ADVANCE_SCHEDULE_SQL.format(p="?"), (last_tick, name, expected)))
        return cur.rowcount > 0

    async def set_schedule_paused(self, name: str, paused: bool) -> None:
        await self._io(lambda: self._db.execute(PAUSE_SCHEDULE_SQL.format(p="?"), (int(paused), name)))

    async def unfinished_with_key_prefix(self, prefix: str) -> int:
        row = await self._io(lambda: self._db.execute(UNFINISHED_PREFIX_SQL.format(p="?"), (like_prefix(prefix),)).fetchone())
        return int(row[0])

    async def wake(self, run_id: str) -> bool:
        cur = await self._io(lambda: self._db.execute(WAKE_SQL.format(p="?"), (run_id,)))
        return cur.rowcount > 0

    async def add_signal(self, run_id: str, name: str, signal_id: str, payload: Any, at: float) -> bool:
        def op(db: sqlite3.Connection) -> bool:
            added = db.execute(ADD_SIGNAL_SQL.format(p="?"), (run_id, signal_id, name, dump_json(payload), at)).rowcount > 0
            if added:
                db.execute(WAKE_SQL.format(p="?"), (run_id,))
            return added

        return await self._io(lambda: self._tx(op))  # one writer at a time: a park cannot interleave

    async def has_signal(self, run_id: str, signal_id: str) -> bool:
        row = await self._io(lambda: self._db.execute(HAS_SIGNAL_SQL.format(p="?"), (run_id, signal_id)).fetchone())
        return row is not None

    async def take_signal(self, run_id: str, name: str, step: str, lease: Lease) -> tuple[bool, Any]:
        def op(db: sqlite3.Connection) -> tuple[bool, Any]:
            if db.execute(self._HELD, (run_id, lease.owner, lease.epoch)).fetchone() is None:
                raise LeaseLost(run_id, lease)
            taken = db.execute(TAKEN_SIGNAL_SQL.format(p="?"), (run_id, step)).fetchone()
            if taken is not None:
                return True, jsonio.load_stored(taken[0])
            row = db.execute(NEXT_SIGNAL_SQL.format(p="?"), (run_id, name)).fetchone()
            if row is None:
                return False, None
            db.execute(CONSUME_SIGNAL_SQL.format(p="?"), (step, run_id, row[0]))
            return True, jsonio.load_stored(row[1])

        return await self._io(lambda: self._tx(op))

    async def cancel_queued(self, run_id: str, error: ErrorInfo, at: float) -> bool:
        cur = await self._io(
            lambda: self._db.execute(CANCEL_QUEUED_SQL.format(p="?"), (error.model_dump_json(), at, run_id))
        )
        return cur.rowcount > 0

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
        self._items: dict[tuple[str, str], dict[int, ItemOutcome]] = {}
        self._signals: dict[str, list[dict[str, Any]]] = {}
        self._schedules: dict[str, list[Any]] = {}  # name -> [paused, last_tick]
        self._events: list[Event] = []
        self._event_ids: dict[str, Event] = {}
        self._subs: dict[str, dict[str, Any]] = {}
        self._dead: dict[tuple[str, int], dict[str, Any]] = {}

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
            "positions": {st.name: i for i, st in enumerate(run.steps)},
        }
        if run.idempotency_key is not None:
            self._keys[run.idempotency_key] = run.run_id
        return run, True

    def _copy(self, run: RunState) -> RunState:
        """A copy for a reader, with what SQL backends derive on read (map progress, queue position)."""
        out = run.model_copy(deep=True)
        for st in out.steps:
            if st.map is not None:
                items = sorted(self._items.get((run.run_id, st.name), {}).values(), key=lambda i: i.index)
                failed = [i for i in items if i.status is StepStatus.FAILED]
                st.map = MapProgress(
                    total=st.map.total,
                    succeeded=len(items) - len(failed),
                    failed=len(failed),
                    failed_items=[
                        {"index": i.index, "error": i.error.model_dump(mode="json") if i.error else None}
                        for i in failed[:FAILED_ITEMS_SHOWN]
                    ],
                )
        if out.status is RunStatus.QUEUED:
            out.queue_position = 1 + sum(
                1 for r in self._runs.values()
                if r.status is RunStatus.QUEUED and r.concurrency_key == run.concurrency_key and _line(r) < _line(run)
            )
        return out

    async def get_run(self, run_id: str) -> RunState | None:
        run = self._runs.get(run_id)
        return None if run is None else self._copy(run)

    async def get_spec(self, run_id: str) -> str:
        return str(self._meta[run_id]["spec"])

    async def list_runs(
        self,
        *,
        status: RunStatus | None = None,
        workflow: str | None = None,
        parent_run_id: str | None = None,
        limit: int = 50,
        before: float | None = None,
    ) -> list[RunState]:
        runs = [
            r
            for r in self._runs.values()
            if (status is None or r.status is status)
            and (workflow is None or r.workflow == workflow)
            and (parent_run_id is None or r.parent_run_id == parent_run_id)
            and (before is None or r.created_at < before)
        ]
        runs.sort(key=lambda r: r.created_at, reverse=True)
        return [self._copy(r) for r in runs[:limit]]

    def _holds(self, run_id: str, owner: str, epoch: int) -> bool:
        meta = self._meta.get(run_id, {})
        return (meta.get("owner"), meta.get("epoch")) == (owner, epoch)

    def _check(self, run_id: str, lease: Lease) -> None:
        if not self._holds(run_id, lease.owner, lease.epoch):
            raise LeaseLost(run_id, lease)

    async def save_run(self, run: RunState, lease: Lease, *, release: bool = False, steps: Sequence[StepState] = ()) -> None:
        self._check(run.run_id, lease)
        for st in steps:
            await self.save_step(run.run_id, st, lease)
        stored = self._runs[run.run_id]
        self._runs[run.run_id] = stored.model_copy(
            update={k: getattr(run, k) for k in ("status", "output", "error", "started_at", "finished_at")}, deep=True
        )
        if release:
            self._meta[run.run_id]["lease"] = 0.0

    async def save_step(self, run_id: str, step: StepState, lease: Lease) -> None:
        self._check(run_id, lease)
        run = self._runs[run_id]
        position = self._meta[run_id]["positions"][step.name]  # O(1): a run may have 1,000 steps
        run.steps[position] = step.model_copy(deep=True)

    async def save_steps(self, run_id: str, steps: Sequence[StepState], lease: Lease) -> None:
        for step in steps:
            await self.save_step(run_id, step, lease)

    async def claim_unfinished(self, owner: str, lease_s: float, limit: int = 100) -> list[tuple[str, int]]:
        now = self._clock()
        ids = [
            i
            for i, r in sorted(self._runs.items(), key=lambda kv: kv[1].created_at)
            if r.status.value in _UNFINISHED
            and self._meta[i]["lease"] < now
            and (self._meta[i].get("wake_at") is None or self._meta[i]["wake_at"] <= now)
        ][:limit]
        for i in ids:
            self._meta[i].update(owner=owner, lease=now + lease_s, epoch=self._meta[i]["epoch"] + 1, wake_at=None)
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

    async def save_items(self, run_id: str, step: str, items: Sequence[ItemOutcome], lease: Lease) -> None:
        self._check(run_id, lease)
        self._items.setdefault((run_id, step), {}).update({i.index: i for i in items})

    async def load_items(self, run_id: str, step: str) -> dict[int, ItemOutcome]:
        return dict(self._items.get((run_id, step), {}))

    async def admit(self, key: str, max_runs: int, owner: str, lease_s: float) -> list[tuple[str, int]]:
        same = [r for r in self._runs.values() if r.concurrency_key == key]
        free = max_runs - sum(1 for r in same if r.status.value in _UNFINISHED)
        queued = sorted((r for r in same if r.status is RunStatus.QUEUED), key=_line)[: max(free, 0)]
        for r in queued:
            r.status = RunStatus.PENDING
            self._meta[r.run_id].update(owner=owner, lease=self._clock() + lease_s, epoch=self._meta[r.run_id]["epoch"] + 1)
        return [(r.run_id, self._meta[r.run_id]["epoch"]) for r in queued]

    async def queued_keys(self) -> list[str]:
        return sorted({r.concurrency_key for r in self._runs.values() if r.status is RunStatus.QUEUED and r.concurrency_key})

    async def park(self, run_id: str, wake_at: float, signals: Sequence[str], lease: Lease) -> None:
        self._check(run_id, lease)
        came = any(s["name"] in signals and s["by"] is None for s in self._signals.get(run_id, []))
        self._meta[run_id].update(wake_at=0.0 if came else wake_at, lease=0.0)

    async def append_event(self, event_id: str, type: str, key: str | None, payload: Any, at: float) -> tuple[Event, bool]:
        if event_id in self._event_ids:
            return self._event_ids[event_id], False
        event = Event(len(self._events) + 1, event_id, type, key, jsonio.load_stored(dump_json(payload)), at)
        self._events.append(event)
        self._event_ids[event_id] = event
        return event, True

    async def read_events(self, after: int, types: Sequence[str] | None, limit: int) -> list[Event]:
        return [e for e in self._events[after:] if not types or e.type in types][:limit]

    async def claim_subscription(self, name: str, owner: str, lease_s: float) -> tuple[int, int, float] | None:
        now = self._clock()
        sub = self._subs.setdefault(name, {"position": 0, "owner": None, "lease_until": 0.0, "attempts": 0, "retry_at": 0.0})
        if sub["owner"] != owner and sub["lease_until"] >= now:
            return None
        sub.update(owner=owner, lease_until=now + lease_s)
        return sub["position"], sub["attempts"], sub["retry_at"]

    async def advance_subscription(
        self, name: str, owner: str, position: int, attempts: int, retry_at: float, last_error: str | None
    ) -> bool:
        sub = self._subs.get(name)
        if sub is None or sub["owner"] != owner:
            return False
        sub.update(position=position, attempts=attempts, retry_at=retry_at, last_error=last_error)
        return True

    async def add_dead_letter(self, subscription: str, seq: int, attempts: int, error: ErrorInfo, at: float) -> None:
        self._dead[(subscription, seq)] = {"attempts": attempts, "error": error, "dead_at": at, "replayed_at": None}

    async def list_dead_letters(self, subscription: str | None, limit: int, seq: int | None = None) -> list[dict[str, Any]]:
        rows = sorted(
            (
                (sub, n, d)
                for (sub, n), d in self._dead.items()
                if (subscription is None or sub == subscription) and (seq is None or n == seq)
            ),
            key=lambda r: (r[2]["dead_at"], r[1]),
            reverse=True,
        )[:limit]
        return [
            {
                "subscription": sub,
                "attempts": d["attempts"],
                "error": d["error"].model_dump(mode="json"),
                "dead_at": d["dead_at"],
                "replayed_at": d["replayed_at"],
                "event": self._events[n - 1].public(),
            }
            for sub, n, d in rows
        ]

    async def mark_replayed(self, subscription: str, seq: int, at: float) -> None:
        if (subscription, seq) in self._dead:
            self._dead[(subscription, seq)]["replayed_at"] = at

    async def subscription_lag(self, name: str, types: Sequence[str]) -> tuple[int, int]:
        position = self._subs.get(name, {}).get("position", 0)
        return position, sum(1 for e in self._events[position:] if e.type in types)

    async def schedule_states(self) -> dict[str, tuple[bool, float | None]]:
        return {name: (bool(p), last) for name, (p, last) in self._schedules.items()}

    async def init_schedule(self, name: str, last_tick: float) -> None:
        self._schedules.setdefault(name, [False, last_tick])

    async def advance_schedule(self, name: str, expected: float, last_tick: float) -> bool:
        state = self._schedules.get(name)
        if state is None or state[1] != expected:
            return False
        state[1] = last_tick
        return True

    async def set_schedule_paused(self, name: str, paused: bool) -> None:
        if name in self._schedules:
            self._schedules[name][0] = paused

    async def unfinished_with_key_prefix(self, prefix: str) -> int:
        return sum(
            1 for r in self._runs.values() if (r.idempotency_key or "").startswith(prefix) and r.status.value in ("queued", *_UNFINISHED)
        )

    async def wake(self, run_id: str) -> bool:
        meta = self._meta.get(run_id)
        if meta is None or meta.get("wake_at") is None:
            return False
        meta["wake_at"] = 0.0
        return True

    async def add_signal(self, run_id: str, name: str, signal_id: str, payload: Any, at: float) -> bool:
        signals = self._signals.setdefault(run_id, [])
        if any(s["id"] == signal_id for s in signals):
            return False
        signals.append({"id": signal_id, "name": name, "payload": payload, "at": at, "by": None})
        await self.wake(run_id)
        return True

    async def has_signal(self, run_id: str, signal_id: str) -> bool:
        return any(s["id"] == signal_id for s in self._signals.get(run_id, []))

    async def take_signal(self, run_id: str, name: str, step: str, lease: Lease) -> tuple[bool, Any]:
        self._check(run_id, lease)
        signals = sorted(self._signals.get(run_id, []), key=lambda s: (s["at"], s["id"]))
        for s in signals:
            if s["by"] == step:
                return True, s["payload"]
        for s in signals:
            if s["name"] == name and s["by"] is None:
                s["by"] = step
                return True, s["payload"]
        return False, None

    async def cancel_queued(self, run_id: str, error: ErrorInfo, at: float) -> bool:
        run = self._runs.get(run_id)
        if run is None or run.status is not RunStatus.QUEUED:
            return False
        run.status, run.error, run.finished_at = RunStatus.CANCELLED, error, at
        return True

    async def close(self) -> None:
        pass


def _line(run: RunState) -> tuple[Any, ...]:
    """A queued run's place in its key's line: highest priority first, then oldest."""
    return (-run.priority, run.created_at, run.run_id)


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
