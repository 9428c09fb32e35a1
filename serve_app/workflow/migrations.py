"""Versioned schema migrations of the run store, applied at start.

Each migration is a version number and its statements; a database records the
versions it has applied in ``schema_migrations``. Applying takes the database's
write lock first (``BEGIN IMMEDIATE`` on SQLite), so replicas that start at
once apply each migration exactly once. A database created before versioning
(it has ``runs`` but no ``schema_migrations``) counts as version 1.
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
)


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
