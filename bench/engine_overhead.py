"""Per-step cost of the workflow engine itself, without Ray (in-process pools).

    python -m bench.engine_overhead

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


def main() -> None:
    runs = int(sys.argv[1]) if len(sys.argv) > 1 else 40
    from serve_app.testing_postgres import PostgresServer

    with PostgresServer() as pg:
        for store in ("memory", "sqlite", "postgres"):
            for poll in (0.0, 0.5):
                ms = asyncio.run(per_step_ms(store, poll, runs, pg.dsn))
                print(f"store={store:8s} cancel_poll_s={poll:.1f}  {ms:.2f} ms/step")


if __name__ == "__main__":
    main()
