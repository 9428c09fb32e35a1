"""Per-step cost of the workflow engine itself, without Ray (in-process pools).

    python -m bench.engine_overhead
    python -m bench.engine_overhead --concurrent   # 200 runs at once: memory vs SQLite with/without group commit

Runs a chain of 10 noop steps through the real engine and dispatcher with the
in-process pools, for each store (memory, SQLite, a real local Postgres), and
prints milliseconds per step (median of repeats). Isolates engine + store cost
from Ray's handle-call cost.
"""

from __future__ import annotations

import asyncio
import statistics
import sys
import tempfile
import time

from serve_app.runtime.config import AppConfig
from serve_app.testing import in_process_dispatcher
from serve_app.workflow.engine import RunEngine
from serve_app.workflow.spec import WorkflowSpec
from serve_app.workflow.store import open_store

CHAIN = WorkflowSpec.model_validate(
    {
        "name": "chain10",
        "steps": [{"name": "s0", "task_type": "noop"}]
        + [{"name": f"s{i}", "task_type": "noop", "depends_on": [f"s{i-1}"]} for i in range(1, 10)],
    }
)
CONFIG = AppConfig.from_args({"pools": {"p": {"handler_modules": ["serve_app.examples.basic"], "task_types": ["noop"]}}})


async def per_step_ms(store_kind: str, cancel_poll_s: float, runs: int, dsn: str | None = None) -> float:
    dispatcher, _, pools = in_process_dispatcher(CONFIG)
    with tempfile.TemporaryDirectory() as tmp:
        store = await open_store(store_kind, path=f"{tmp}/r.sqlite3", dsn=dsn)
        engine = RunEngine(store, dispatcher.submit, {"chain10": CHAIN}, owner="bench", cancel_poll_s=cancel_poll_s)
        samples = []
        for _ in range(runs):
            t = time.perf_counter()
            run, _ = await engine.start("chain10", {})
            done = await engine.wait(run.run_id, 30)
            assert done.status.value == "succeeded"
            samples.append((time.perf_counter() - t) / 10 * 1000)
        await store.close()
    pools.close()
    return statistics.median(samples)


async def concurrent_runs_per_s(store_kind: str, n: int, max_batch: int | None = None) -> float:
    """n chain10 runs started at once and awaited: runs/s (the durable store's cost under load).
    ``max_batch=1`` turns SQLite's group commit off (every write its own transaction)."""
    dispatcher, _, pools = in_process_dispatcher(CONFIG)
    with tempfile.TemporaryDirectory() as tmp:
        store = await open_store(store_kind, path=f"{tmp}/r.sqlite3")
        if max_batch is not None:
            store._writes._max_batch = max_batch  # type: ignore[attr-defined]
        engine = RunEngine(store, dispatcher.submit, {"chain10": CHAIN}, owner="bench", cancel_poll_s=0.5)
        t = time.perf_counter()
        started = [run for run, _ in await asyncio.gather(*[engine.start("chain10", {}) for _ in range(n)])]
        done = await asyncio.gather(*[engine.wait(r.run_id, 120) for r in started])
        elapsed = time.perf_counter() - t
        assert all(d.status.value == "succeeded" for d in done)
        await engine.shutdown()
        await store.close()
    pools.close()
    return n / elapsed


def main() -> None:
    if "--concurrent" in sys.argv:
        n = 200
        for label, kind, batch in (("memory", "memory", None), ("sqlite, group commit", "sqlite", None), ("sqlite, one write per transaction", "sqlite", 1)):
            rates = [asyncio.run(concurrent_runs_per_s(kind, n, batch)) for _ in range(3)]
            print(f"{label:36s} {statistics.median(rates):7.1f} runs/s ({n} chain10 runs at once; {', '.join(f'{r:.1f}' for r in rates)})")
        return
    runs = int(sys.argv[1]) if len(sys.argv) > 1 else 40
    from serve_app.testing_postgres import PostgresServer

    with PostgresServer() as pg:
        for store in ("memory", "sqlite", "postgres"):
            for poll in (0.0, 0.5):
                ms = asyncio.run(per_step_ms(store, poll, runs, pg.dsn))
                print(f"store={store:8s} cancel_poll_s={poll:.1f}  {ms:.2f} ms/step")


if __name__ == "__main__":
    main()
