"""Dynamic workflows: per-element cost of map steps, and per-step cost as a DAG grows.

    python -m bench.dynamic                 # maps at 100/1,000/10,000 elements, every store; DAG curves
    python -m bench.dynamic --dag-only      # just the chain / fan-out / map fan-out curves (memory, SQLite)
    python -m bench.dynamic --serve         # 1,000 diamond runs/s, and maps on real Serve (SQLite) vs client tasks

Everything runs through the real engine, store and dispatcher with the
in-process pools (the ``noop`` handler), without Ray: what is measured is the
Coordinator's own cost per element or step. For maps it also reports the
Coordinator's peak Python memory per element (tracemalloc, whole run, input
list and gathered results included) — flat across sizes means no per-element
state beyond the element's own input and result. Ratios within one run are
what to compare; these machines are noisy.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
import tracemalloc
from typing import Any

from serve_app.runtime.config import AppConfig
from serve_app.testing import in_process_dispatcher
from serve_app.workflow.engine import RunEngine
from serve_app.workflow.spec import WorkflowSpec
from serve_app.workflow.store import open_store

CONFIG = AppConfig.from_args({"pools": {"p": {"handler_modules": ["serve_app.examples.basic"], "task_types": ["noop"]}}})


def map_spec(max_parallel: int) -> WorkflowSpec:
    return WorkflowSpec.model_validate(
        {
            "name": "mapper",
            "steps": [
                {
                    "name": "each",
                    "task_type": "noop",
                    "map": {"over": "${input.items}", "max_parallel": max_parallel},
                    "input": {"i": "${index}", "v": "${item}"},
                }
            ],
        }
    )


def chain(n: int) -> WorkflowSpec:
    steps: list[dict[str, Any]] = [{"name": "s0", "task_type": "noop"}]
    steps += [{"name": f"s{i}", "task_type": "noop", "depends_on": [f"s{i - 1}"]} for i in range(1, n)]
    return WorkflowSpec.model_validate({"name": f"chain{n}", "steps": steps})


def fanout(width: int) -> WorkflowSpec:
    steps: list[dict[str, Any]] = [{"name": f"f{i}", "task_type": "noop"} for i in range(width)]
    steps.append({"name": "join", "task_type": "noop", "depends_on": [f"f{i}" for i in range(width)]})
    return WorkflowSpec.model_validate({"name": f"fanout{width}", "steps": steps})


async def run_once(
    store_kind: str, spec: WorkflowSpec, run_input: dict[str, Any], dsn: str | None, *, trace: bool, timed: int = 1
) -> tuple[float, int]:
    """Seconds for one run of ``spec`` (the median of ``timed`` runs), and the peak traced memory
    in bytes of the last (0 if not traced).

    The runs measured follow a first on their store and engine: the first (not timed) pays what
    any first run pays once — a new database file's first pages and WAL, the definition's
    derived lookups, cold code paths — which is not a cost of the DAG's size. A run of a few
    steps takes about 2 ms, where one garbage collection or scheduler hiccup is a large part of
    one sample: small DAGs are timed several times."""
    dispatcher, _, pools = in_process_dispatcher(CONFIG)
    with tempfile.TemporaryDirectory() as tmp:
        store = await open_store(store_kind, path=f"{tmp}/r.sqlite3", dsn=dsn)
        engine = RunEngine(store, dispatcher.submit, {spec.name: spec}, owner="bench", lease_s=60)
        first, _ = await engine.start(spec.name, run_input)
        assert (await engine.wait(first.run_id, 600)).status.value == "succeeded"
        times = []
        for i in range(timed):
            if trace and i == timed - 1:
                tracemalloc.start()
                tracemalloc.reset_peak()
            t = time.perf_counter()
            run, _ = await engine.start(spec.name, run_input)
            done = await engine.wait(run.run_id, 600)
            times.append(time.perf_counter() - t)
            assert done.status.value == "succeeded", done.error
        elapsed = statistics.median(times)
        peak = tracemalloc.get_traced_memory()[1] if trace else 0
        if trace:
            tracemalloc.stop()
        await engine.shutdown()
        await store.close()
    pools.close()
    return elapsed, peak


def bench_maps(dsn: str | None, stores: list[str], repeats: int) -> None:
    print("map step: per-element cost (noop, max_parallel 64) and Coordinator peak memory per element")
    print(f"{'store':9s} {'elements':>8s} {'ms/element':>11s} {'µs/element':>11s} {'peak KiB/element':>17s}")
    for store in stores:
        for n in (100, 1000, 10000):
            items = [{"row": i, "text": f"element {i}"} for i in range(n)]
            times = [asyncio.run(run_once(store, map_spec(64), {"items": items}, dsn, trace=False))[0] for _ in range(repeats)]
            _, peak = asyncio.run(run_once(store, map_spec(64), {"items": items}, dsn, trace=True))
            per = statistics.median(times) / n
            print(f"{store:9s} {n:8d} {per * 1000:11.3f} {per * 1e6:11.0f} {peak / n / 1024:17.2f}")


def diamond() -> WorkflowSpec:
    steps = [
        {"name": "a", "task_type": "noop"},
        {"name": "b", "task_type": "noop", "depends_on": ["a"]},
        {"name": "c", "task_type": "noop", "depends_on": ["a"]},
        {"name": "d", "task_type": "noop", "depends_on": ["b", "c"]},
    ]
    return WorkflowSpec.model_validate({"name": "diamond", "steps": steps})


def bench_dags(repeats: int, stores: list[str]) -> None:
    """Per-step cost as the DAG grows: chains 10 -> 1,000, fan-outs 16 -> 999 (a workflow has at
    most 1,000 steps), and map fan-outs 16 -> 4,096 elements (ms per element); spread = max/min."""
    print("DAG steps: per-step cost as the DAG grows (in-process pools)")
    print(f"{'store':7s} {'shape':14s} {'steps':>6s} {'ms/step':>8s}")
    for store in stores:
        shapes = [("chain", n, chain(n), {}) for n in (10, 100, 1000)]
        shapes += [("fan-out", w + 1, fanout(w), {}) for w in (16, 64, 256, 999)]
        shapes += [("map fan-out", n, map_spec(64), {"items": list(range(n))}) for n in (16, 256, 4096)]
        # Repeats go round the shapes (every shape once, then again), so a slow spell on the
        # machine lands on several shapes' samples rather than on every sample of one shape.
        times: list[list[float]] = [[] for _ in shapes]
        for _ in range(repeats):
            for (_label, steps, spec, run_input), samples in zip(shapes, times, strict=True):
                timed = max(1, min(9, 1000 // steps))  # 9 runs of 16 or 17 steps, 1 of 1,000 or 4,096
                samples.append(asyncio.run(run_once(store, spec, run_input, None, trace=False, timed=timed))[0])
        costs: dict[str, list[float]] = {}
        for (label, steps, _spec, _input), samples in zip(shapes, times, strict=True):
            costs.setdefault(label, []).append(statistics.median(samples) / steps * 1000)
            print(f"{store:7s} {label:14s} {steps:6d} {costs[label][-1]:8.3f}", flush=True)
        spreads = ", ".join(f"{label} {max(c) / min(c):.2f}" for label, c in costs.items())
        print(f"{store:7s} spread (max/min per-step cost within a shape): {spreads}")


def bench_serve(repeats: int) -> None:
    """A map of n noop elements on real Serve (SQLite store, every element recorded) against the
    same n noop tasks sent by an async HTTP client, 64 in flight: what the map costs per element
    beyond the task itself."""
    import httpx
    from ray import serve

    from bench.run import bench_args, runs_per_s, wait_ready
    from serve_app.testing import free_port
    from graphs.serveflow import build_app
    from serve_app.core.connect import connect, disconnect

    port = free_port()
    connect(address="local", num_cpus=8, include_dashboard=False, log_to_driver=False)
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    http = f"http://127.0.0.1:{port}"
    with tempfile.TemporaryDirectory() as tmp:
        args = bench_args("sqlite", f"{tmp}/runs.sqlite3")
        args["workflows"]["definitions"].append(map_spec(64).model_dump(mode="json", exclude_none=True))
        args["workflows"]["definitions"].append(diamond().model_dump(mode="json", exclude_none=True))
        try:
            serve.run(build_app(args), name="serveflow", route_prefix="/")
            wait_ready(http + "/readyz", 120)

            async def tasks(n: int) -> float:
                async with httpx.AsyncClient(base_url=http, timeout=120) as c:
                    gate = asyncio.Semaphore(64)

                    async def one(i: int) -> None:
                        async with gate:
                            r = await c.post("/v1/tasks", json={"task_type": "noop", "payload": {"i": i}})
                            assert r.status_code == 200

                    t = time.perf_counter()
                    await asyncio.gather(*(one(i) for i in range(n)))
                    return time.perf_counter() - t

            def mapped(n: int) -> float:
                with httpx.Client(base_url=http, timeout=600) as c:
                    t = time.perf_counter()
                    r = c.post("/v1/workflows/mapper/runs", json={"input": {"items": list(range(n))}, "wait": True, "wait_timeout_s": 600})
                    assert r.json()["run"]["status"] == "succeeded", r.text[:500]
                    return time.perf_counter() - t

            runs_per_s(http, "diamond", 50)  # warm-up
            rate = runs_per_s(http, "diamond", 1000)
            print(f"real Serve (2 cores, SQLite): 1,000 diamond runs (4 noop steps), 16 at a time: {rate:.1f} runs/s, "
                  f"{rate * 4:.0f} steps/s", flush=True)
            print("real Serve (2 cores, SQLite): map of n noop elements vs n noop tasks from a client (64 in flight)")
            print(f"{'elements':>8s} {'map ms/element':>15s} {'tasks ms/task':>14s} {'ratio':>6s}")
            for n in (100, 1000, 10000):
                reps = repeats if n < 10000 else 1
                m = statistics.median(mapped(n) for _ in range(reps)) / n
                t = statistics.median(asyncio.run(tasks(n)) for _ in range(reps)) / n
                print(f"{n:8d} {m * 1000:15.3f} {t * 1000:14.3f} {m / t:6.2f}", flush=True)
        finally:
            serve.shutdown()
            disconnect()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--serve", action="store_true")
    parser.add_argument("--dag-only", action="store_true")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--stores", default="memory,sqlite,postgres")
    args = parser.parse_args()
    if args.serve:
        bench_serve(args.repeats)
        return
    if not args.dag_only:
        stores = args.stores.split(",")
        if "postgres" in stores:
            from serve_app.testing_postgres import PostgresServer

            with PostgresServer() as pg:
                bench_maps(pg.dsn, stores, args.repeats)
        else:
            bench_maps(None, stores, args.repeats)
    bench_dags(args.repeats, ["memory", "sqlite"])


if __name__ == "__main__":
    main()
