"""Control-plane benchmarks: run throughput by store, one vs two Coordinators, takeover latency.

    python -m bench.control_plane              # ~4 minutes on 2 cores
    python -m bench.control_plane --runs 100   # fewer runs per measurement

One run, one machine, real parts: a local Ray cluster, Serve, the real app
(`graphs.serveflow:build_app`) and a real Postgres started here. Measures:

- runs/s of one-step workflow runs started asynchronously and awaited, with the
  SQLite store (one Coordinator), Postgres with one Coordinator, and Postgres
  with two Coordinators;
- takeover: with two Coordinators on Postgres, runs in flight, one Coordinator
  replica killed (ray.kill, no graceful shutdown): seconds until another holds
  every run the dead one held (read from the database), and until they finish.

Prints one JSON line per measurement and a markdown table for BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from typing import Any

import httpx

from bench.run import bench_args, runs_per_s, wait_ready
from serve_app.testing import free_port

LEASE_S = 3.0


def _args(store: str, path: str, dsn: str | None, coordinators: int) -> dict[str, Any]:
    args = bench_args(store, path)
    args["workflows"]["lease_s"] = LEASE_S
    args["workflows"]["definitions"].append(
        {"name": "slow", "steps": [{"name": "wait", "task_type": "sleep", "input": {"seconds": 6.0}}]}
    )
    if dsn:
        args["workflows"]["dsn"] = dsn
    args["coordinator"] = {"num_replicas": coordinators, "num_cpus": 0.1}
    return args


def _fresh_db(admin_dsn: str, name: str) -> str:
    import psycopg

    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    return admin_dsn.rsplit("/", 1)[0] + f"/{name}"


def _owners(dsn: str, run_ids: list[str]) -> dict[str, str]:
    import psycopg

    with psycopg.connect(dsn) as conn:
        return dict(conn.execute("SELECT run_id, owner FROM runs WHERE run_id = ANY(%s)", (run_ids,)).fetchall())


def bench_takeover(http: str, dsn: str, n: int = 12) -> dict[str, Any]:
    """Kill a Coordinator that holds runs; time until the survivor holds them, and until they finish."""
    import ray

    with httpx.Client(base_url=http, timeout=30) as c:
        run_ids = [c.post("/v1/workflows/slow/runs", json={}).json()["run_id"] for _ in range(n)]
        time.sleep(1.0)
        owners = _owners(dsn, run_ids)
        victim = max(set(owners.values()), key=list(owners.values()).count)
        held = [r for r, o in owners.items() if o == victim]
        (actor,) = [
            a for a in ray.util.list_named_actors(all_namespaces=True) if a["name"].endswith(f"#Coordinator#{victim}")
        ]
        killed = time.perf_counter()
        ray.kill(ray.get_actor(actor["name"], namespace=actor["namespace"]), no_restart=False)
        while any(o == victim for o in _owners(dsn, held).values()):
            time.sleep(0.05)
        taken_over = time.perf_counter() - killed
        while True:
            states = [c.get(f"/v1/runs/{r}").json() for r in held]
            if all(s.get("run") and s["run"]["status"] == "succeeded" for s in states):
                break
            time.sleep(0.2)
        finished = time.perf_counter() - killed
    return {"runs_held_by_killed": len(held), "lease_s": LEASE_S, "takeover_s": taken_over, "all_finished_s": finished}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=3)
    opts = parser.parse_args()

    from ray import serve

    from graphs.serveflow import build_app
    from serve_app.core.connect import connect, disconnect
    from serve_app.testing_postgres import PostgresServer

    pg = PostgresServer()
    http_port = free_port()
    connect(address="local", num_cpus=8, include_dashboard=False, log_to_driver=False)
    serve.start(http_options={"host": "127.0.0.1", "port": http_port})
    http = f"http://127.0.0.1:{http_port}"
    results: dict[str, Any] = {"runs": opts.runs}
    try:
        with tempfile.TemporaryDirectory() as tmp:
            configs = [("sqlite", 1, None), ("postgres", 1, _fresh_db(pg.dsn, "one_coordinator")), ("postgres", 2, _fresh_db(pg.dsn, "two_coordinators"))]
            for store, coordinators, dsn in configs:
                serve.run(build_app(_args(store, f"{tmp}/runs.sqlite3", dsn, coordinators)), name="serveflow", route_prefix="/")
                wait_ready(http + "/readyz", 180)
                runs_per_s(http, "one", 20)  # warm-up
                rps = statistics.median(runs_per_s(http, "one", opts.runs) for _ in range(opts.repeats))
                key = f"{store}_{coordinators}"
                results[key] = rps
                print(json.dumps({"store": store, "coordinators": coordinators, "runs_per_s": rps}), flush=True)
                if coordinators == 2:
                    results["takeover"] = bench_takeover(http, dsn)  # type: ignore[arg-type]
                    print(json.dumps(results["takeover"]), flush=True)
    finally:
        serve.shutdown()
        disconnect()
        pg.close()
    print(render(results))


def render(r: dict[str, Any]) -> str:
    t = r["takeover"]
    return "\n".join(
        [
            f"| store | Coordinators | runs/s ({r['runs']} one-step runs, started then awaited) |",
            "|---|---|---|",
            f"| SQLite | 1 | {r['sqlite_1']:.1f} |",
            f"| Postgres | 1 | {r['postgres_1']:.1f} |",
            f"| Postgres | 2 | {r['postgres_2']:.1f} |",
            "",
            f"Postgres / SQLite: {r['postgres_1'] / r['sqlite_1']:.2f}; two / one Coordinator: {r['postgres_2'] / r['postgres_1']:.2f}.",
            f"Takeover (lease_s={t['lease_s']:g}): a killed Coordinator held {t['runs_held_by_killed']} runs; the survivor held"
            f" all of them {t['takeover_s']:.1f} s after the kill, and they had all finished {t['all_finished_s']:.1f} s after it.",
        ]
    )


if __name__ == "__main__":
    main()
