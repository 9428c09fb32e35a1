"""Versioned schema migrations of the run store, applied at start, for every backend.

Each migration is a version number, a name and its statements in each SQL
dialect (the versions and names are the same for every backend; a unit test
holds them together). A database records the versions it has applied in
``schema_migrations``. Applying takes a database-wide lock first
(``BEGIN IMMEDIATE`` on SQLite, a transaction-scoped advisory lock on Postgres,
whose DDL is transactional), so replicas that start at once apply each
migration exactly once. A SQLite file created before versioning (it has
``runs`` but no ``schema_migrations``) counts as version 1.

JSON columns are TEXT on every backend: what is stored is exactly what
:mod:`serve_app.core.jsonio` accepted and renders (Postgres' JSONB would refuse
``\u0000`` that JSON allows, and reorder keys).
"""

from __future__ import annotations

import sqlite3
import time

Migration = tuple[int, str, tuple[str, ...]]

SQLITE_MIGRATIONS: tuple[Migration, ...] = (
    (
        1,
        "runs and steps",
        (
            """CREATE TABLE IF NOT EXISTS runs (
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
            )""",
            "CREATE INDEX IF NOT EXISTS runs_status ON runs(status, created_at)",
            """CREATE TABLE IF NOT EXISTS steps (
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
            )""",
        ),
    ),
    (
        2,
        "fenced leases: a claim bumps lease_epoch; every write names owner and epoch",
        ("ALTER TABLE runs ADD COLUMN lease_epoch INTEGER NOT NULL DEFAULT 0",),
    ),
    (
        3,
        "dynamic workflows: map elements, child runs, concurrency keys and priority",
        (
            "ALTER TABLE steps ADD COLUMN detail_json TEXT",
            """CREATE TABLE IF NOT EXISTS map_items (
                run_id TEXT NOT NULL REFERENCES runs(run_id),
                step TEXT NOT NULL,
                idx INTEGER NOT NULL,
                status TEXT NOT NULL,
                attempts INTEGER NOT NULL,
                result_json TEXT,
                error_json TEXT,
                finished_at REAL,
                PRIMARY KEY (run_id, step, idx)
            )""",
            "ALTER TABLE runs ADD COLUMN parent_run_id TEXT",
            "ALTER TABLE runs ADD COLUMN parent_step TEXT",
            "ALTER TABLE runs ADD COLUMN concurrency_key TEXT",
            "ALTER TABLE runs ADD COLUMN priority INTEGER NOT NULL DEFAULT 1",
            "CREATE INDEX IF NOT EXISTS runs_parent ON runs(parent_run_id) WHERE parent_run_id IS NOT NULL",
            "CREATE INDEX IF NOT EXISTS runs_concurrency ON runs(concurrency_key, status, priority, created_at)"
            " WHERE concurrency_key IS NOT NULL",
        ),
    ),
    (
        4,
        "durable waits: parked runs wake at wake_at; signals kept per run",
        (
            "ALTER TABLE runs ADD COLUMN wake_at REAL",
            """CREATE TABLE IF NOT EXISTS signals (
                run_id TEXT NOT NULL REFERENCES runs(run_id),
                signal_id TEXT NOT NULL,
                name TEXT NOT NULL,
                payload_json TEXT,
                received_at REAL NOT NULL,
                consumed_by TEXT,
                PRIMARY KEY (run_id, signal_id)
            )""",
            "CREATE INDEX IF NOT EXISTS signals_waiting ON signals(run_id, name, received_at)",
        ),
    ),
    (
        5,
        "cron schedules: pause flag and the last tick handled",
        (
            """CREATE TABLE IF NOT EXISTS schedules (
                name TEXT PRIMARY KEY,
                paused INTEGER NOT NULL DEFAULT 0,
                last_tick REAL
            )""",
            "CREATE INDEX IF NOT EXISTS runs_idempotency_unfinished ON runs(idempotency_key)"
            " WHERE status IN ('queued', 'pending', 'running')",
        ),
    ),
    (
        6,
        "events: an append-only log, subscription positions, dead letters",
        (
            """CREATE TABLE IF NOT EXISTS events (
                seq INTEGER PRIMARY KEY AUTOINCREMENT,
                event_id TEXT NOT NULL UNIQUE,
                type TEXT NOT NULL,
                key TEXT,
                payload_json TEXT,
                appended_at REAL NOT NULL
            )""",
            "CREATE INDEX IF NOT EXISTS events_type ON events(type, seq)",
            """CREATE TABLE IF NOT EXISTS subscriptions (
                name TEXT PRIMARY KEY,
                position INTEGER NOT NULL DEFAULT 0,
                owner TEXT,
                lease_until REAL NOT NULL DEFAULT 0,
                attempts INTEGER NOT NULL DEFAULT 0,
                retry_at REAL NOT NULL DEFAULT 0,
                last_error TEXT
            )""",
            """CREATE TABLE IF NOT EXISTS dead_letters (
                subscription TEXT NOT NULL,
                seq INTEGER NOT NULL,
                attempts INTEGER NOT NULL,
                error_json TEXT,
                dead_at REAL NOT NULL,
                replayed_at REAL,
                PRIMARY KEY (subscription, seq)
            )""",
        ),
    ),
)


POSTGRES_MIGRATIONS: tuple[Migration, ...] = (
    (
        1,
        "runs and steps",
        (
            """CREATE TABLE IF NOT EXISTS runs (
                run_id TEXT PRIMARY KEY,
                workflow TEXT NOT NULL,
                status TEXT NOT NULL,
                input_json TEXT NOT NULL,
                output_json TEXT,
                error_json TEXT,
                idempotency_key TEXT UNIQUE,
                request_hash TEXT NOT NULL,
                spec_json TEXT NOT NULL,
                created_at DOUBLE PRECISION NOT NULL,
                started_at DOUBLE PRECISION,
                finished_at DOUBLE PRECISION,
                trace_id TEXT,
                owner TEXT,
                lease_until DOUBLE PRECISION NOT NULL DEFAULT 0,
                cancel_requested BOOLEAN NOT NULL DEFAULT FALSE
            )""",
            "CREATE INDEX IF NOT EXISTS runs_status ON runs(status, created_at)",
            """CREATE TABLE IF NOT EXISTS steps (
                run_id TEXT NOT NULL REFERENCES runs(run_id),
                position INTEGER NOT NULL,
                name TEXT NOT NULL,
                task_type TEXT NOT NULL,
                status TEXT NOT NULL,
                attempts INTEGER NOT NULL DEFAULT 0,
                started_at DOUBLE PRECISION,
                finished_at DOUBLE PRECISION,
                result_json TEXT,
                error_json TEXT,
                PRIMARY KEY (run_id, name)
            )""",
        ),
    ),
    (
        2,
        "fenced leases: a claim bumps lease_epoch; every write names owner and epoch",
        (
            "ALTER TABLE runs ADD COLUMN IF NOT EXISTS lease_epoch INTEGER NOT NULL DEFAULT 0",
            # What claims scan: unfinished runs by lease expiry (small, however many runs finished).
            "CREATE INDEX IF NOT EXISTS runs_claimable ON runs(lease_until, created_at) WHERE status IN ('pending', 'running')",
        ),
    ),
    (
        3,
        "dynamic workflows: map elements, child runs, concurrency keys and priority",
        (
            "ALTER TABLE steps ADD COLUMN IF NOT EXISTS detail_json TEXT",
            """CREATE TABLE IF NOT EXISTS map_items (
                run_id TEXT NOT NULL REFERENCES runs(run_id),
                step TEXT NOT NULL,
                idx INTEGER NOT NULL,
                status TEXT NOT NULL,
                attempts INTEGER NOT NULL,
                result_json TEXT,
                error_json TEXT,
                finished_at DOUBLE PRECISION,
                PRIMARY KEY (run_id, step, idx)
            )""",
            "ALTER TABLE runs ADD COLUMN IF NOT EXISTS parent_run_id TEXT",
            "ALTER TABLE runs ADD COLUMN IF NOT EXISTS parent_step TEXT",
            "ALTER TABLE runs ADD COLUMN IF NOT EXISTS concurrency_key TEXT",
            "ALTER TABLE runs ADD COLUMN IF NOT EXISTS priority INTEGER NOT NULL DEFAULT 1",
            "CREATE INDEX IF NOT EXISTS runs_parent ON runs(parent_run_id) WHERE parent_run_id IS NOT NULL",
            "CREATE INDEX IF NOT EXISTS runs_concurrency ON runs(concurrency_key, status, priority, created_at)"
            " WHERE concurrency_key IS NOT NULL",
        ),
    ),
    (
        4,
        "durable waits: parked runs wake at wake_at; signals kept per run",
        (
            "ALTER TABLE runs ADD COLUMN IF NOT EXISTS wake_at DOUBLE PRECISION",
            """CREATE TABLE IF NOT EXISTS signals (
                run_id TEXT NOT NULL REFERENCES runs(run_id),
                signal_id TEXT NOT NULL,
                name TEXT NOT NULL,
                payload_json TEXT,
                received_at DOUBLE PRECISION NOT NULL,
                consumed_by TEXT,
                PRIMARY KEY (run_id, signal_id)
            )""",
            "CREATE INDEX IF NOT EXISTS signals_waiting ON signals(run_id, name, received_at)",
        ),
    ),
    (
        5,
        "cron schedules: pause flag and the last tick handled",
        (
            """CREATE TABLE IF NOT EXISTS schedules (
                name TEXT PRIMARY KEY,
                paused INTEGER NOT NULL DEFAULT 0,
                last_tick DOUBLE PRECISION
            )""",
            "CREATE INDEX IF NOT EXISTS runs_idempotency_unfinished ON runs(idempotency_key)"
            " WHERE status IN ('queued', 'pending', 'running')",
        ),
    ),
    (
        6,
        "events: an append-only log, subscription positions, dead letters",
        (
            """CREATE TABLE IF NOT EXISTS events (
                seq BIGSERIAL PRIMARY KEY,
                event_id TEXT NOT NULL UNIQUE,
                type TEXT NOT NULL,
                key TEXT,
                payload_json TEXT,
                appended_at DOUBLE PRECISION NOT NULL
            )""",
            "CREATE INDEX IF NOT EXISTS events_type ON events(type, seq)",
            """CREATE TABLE IF NOT EXISTS subscriptions (
                name TEXT PRIMARY KEY,
                position BIGINT NOT NULL DEFAULT 0,
                owner TEXT,
                lease_until DOUBLE PRECISION NOT NULL DEFAULT 0,
                attempts INTEGER NOT NULL DEFAULT 0,
                retry_at DOUBLE PRECISION NOT NULL DEFAULT 0,
                last_error TEXT
            )""",
            """CREATE TABLE IF NOT EXISTS dead_letters (
                subscription TEXT NOT NULL,
                seq BIGINT NOT NULL,
                attempts INTEGER NOT NULL,
                error_json TEXT,
                dead_at DOUBLE PRECISION NOT NULL,
                replayed_at DOUBLE PRECISION,
                PRIMARY KEY (subscription, seq)
            )""",
        ),
    ),
)

# Any constant: all replicas contend for the same advisory lock while migrating.
POSTGRES_MIGRATION_LOCK = 0x5E5F10


def migrate_sqlite(db: sqlite3.Connection, migrations: tuple[Migration, ...] = SQLITE_MIGRATIONS) -> list[int]:
    """Apply what ``db`` lacks, in order, in one transaction; returns the versions applied now."""
    db.execute("BEGIN IMMEDIATE")
    try:
        db.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at REAL NOT NULL)"
        )
        done = {row[0] for row in db.execute("SELECT version FROM schema_migrations")}
        legacy = db.execute("SELECT 1 FROM sqlite_master WHERE type='table' AND name='runs'").fetchone()
        if not done and legacy:
            done = {1}
            db.execute("INSERT INTO schema_migrations VALUES (1, ?, ?)", (migrations[0][1], time.time()))
        applied = []
        for version, name, statements in migrations:
            if version in done:
                continue
            for statement in statements:
                db.execute(statement)
            db.execute("INSERT INTO schema_migrations VALUES (?, ?, ?)", (version, name, time.time()))
            applied.append(version)
    except BaseException:
        db.execute("ROLLBACK")
        raise
    db.execute("COMMIT")
    return applied


def postgres_migration_plan(done: set[int], migrations: tuple[Migration, ...] = POSTGRES_MIGRATIONS) -> list[Migration]:
    """The migrations a Postgres database that has applied ``done`` still needs, in order."""
    return [m for m in migrations if m[0] not in done]
