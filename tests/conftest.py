"""Fixtures shared by unit and integration tests: a real Postgres, and run stores of every backend.

Postgres is started once per session from the ``pgserver`` wheel's binaries (a
test extra). Without it the Postgres tests skip locally; with ``CI=true`` a
missing Postgres is a failure, never a skip.
"""

from __future__ import annotations

import asyncio
import os
import uuid
from typing import Any, AsyncIterator, Awaitable, Callable, Iterator

import pytest

from serve_app.workflow.store import MemoryRunStore, RunStore, SqliteRunStore, open_store

STORE_KINDS = ("memory", "sqlite", "postgres")


@pytest.fixture(scope="session")
def postgres() -> Iterator[Any]:
    from serve_app.testing_postgres import PostgresServer

    try:
        server = PostgresServer()
    except RuntimeError as exc:  # pgserver missing
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI=true and no Postgres for the tests: {exc}")
        pytest.skip(str(exc))
    try:
        yield server
    finally:
        server.close()


@pytest.fixture
def pg_dsn(postgres: Any) -> str:
    """A fresh, empty database on the session's Postgres."""
    import psycopg

    name = f"t_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(postgres.dsn, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    return postgres.dsn.rsplit("/", 1)[0] + f"/{name}"


StoreFactory = Callable[..., Awaitable[RunStore]]


@pytest.fixture
async def store_factory(request: pytest.FixtureRequest, tmp_path: Any) -> AsyncIterator[StoreFactory]:
    """``await make(kind, clock=...)``: a store handle; handles of one kind share one database
    (two SQLite connections or two Postgres pools act like two replicas; memory is one object)."""
    made: list[RunStore] = []
    shared: dict[str, Any] = {}

    async def make(kind: str, **kw: Any) -> RunStore:
        if kind == "memory":
            store: RunStore = shared.setdefault("memory", MemoryRunStore(**kw))
        elif kind == "sqlite":
            store = SqliteRunStore(str(tmp_path / "runs.sqlite3"), **kw)
        else:
            if "dsn" not in shared:
                shared["dsn"] = request.getfixturevalue("pg_dsn")
            store = await open_store("postgres", dsn=shared["dsn"], **kw)
        made.append(store)
        return store

    yield make
    for store in made:
        await store.close()


@pytest.fixture(params=STORE_KINDS)
async def store(request: pytest.FixtureRequest, store_factory: StoreFactory) -> RunStore:
    """One run store of each backend in turn (a module's tests run once per backend)."""
    return await store_factory(request.param)


async def until(check: Callable[[], Awaitable[bool]], timeout: float = 10) -> None:
    """Poll the async ``check`` every 20 ms until it holds (bounded; never hangs a test)."""
    for _ in range(int(timeout / 0.02)):
        if await check():
            return
        await asyncio.sleep(0.02)
    raise AssertionError("condition not reached")
