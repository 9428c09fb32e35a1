"""A real two-node Ray cluster, a real Postgres, two Coordinators: node loss and a database restart.

Its own cluster (not the session's): ``ray start --head`` plus ``ray start
--address=...`` for a second node on this machine, each with its own resources,
and ``serve run`` of a config in which the two Coordinator replicas need a
``coordinator_slot`` each (one per node) and the pools stay on the head. Load is
async workflow runs (a diamond and a fan-out) whose steps record every
execution in a file. The faults:

- the second node dies (its raylet and every process it started, SIGKILL): the
  head's Coordinator claims the dead one's runs once their lease lapses;
- Postgres restarts mid-run: runs pause and continue.

Each asserts: lost = 0 accepted runs, every run succeeds, no step that had
finished before the fault runs again, and re-runs are bounded by what was in
flight. Everything started here is stopped here, by PID (never `ray stop`,
which would take the session's cluster too).
"""

from __future__ import annotations

import collections

import os
import pathlib
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from typing import Any, Iterator

import httpx
import pytest
import yaml

from serve_app.testing import free_port, haproxy_host_env
from tests.integration.conftest import wait_until

pytestmark = pytest.mark.faults

ROOT = pathlib.Path(__file__).parents[2]
RAY = str(pathlib.Path(sys.executable).with_name("ray"))
SERVE = str(pathlib.Path(sys.executable).with_name("serve"))
LEASE_S = 3


def _workflows(record_path: str) -> list[dict[str, Any]]:
    def step(name: str, seconds: float, deps: list[str] = []) -> dict[str, Any]:  # noqa: B006 - read only
        record = {"path": record_path, "key": "${input.key}", "step": name, "seconds": seconds}
        return {"name": name, "task_type": "record", "input": record, "depends_on": deps}

    diamond = [step("a", 0.5), step("b", 1.0, ["a"]), step("c", 1.0, ["a"]), step("d", 0.5, ["b", "c"])]
    fanout = [step(f"f{i}", 1.5) for i in range(4)] + [step("join", 0.2, [f"f{i}" for i in range(4)])]
    billing = {
        "name": "billing",
        "concurrency": {"key": "${input.customer}", "max_runs": 1},
        "steps": [step("bill", 0.6)],
    }
    ticked = {"name": "ticked", "steps": [step("tick", 0.0)]}  # a run per schedule tick / per event
    return [{"name": "diamond", "steps": diamond}, {"name": "fanout", "steps": fanout}, billing, ticked]


class Cluster:
    """Two Ray nodes, Serve from a generated config, all on this machine."""

    def __init__(self, root: pathlib.Path, dsn: str) -> None:
        self.root = root
        self.temp_dir = tempfile.mkdtemp(prefix="sfmn-")  # short: Ray's socket paths have a length limit
        self.record_path = str(root / "executions.log")
        self.gcs_port, self.http_port, self.grpc_port = free_port(), free_port(), free_port()
        self.worker_manager_port = free_port()
        self.dsn = dsn
        self.env = {
            **os.environ,
            "RAY_AUTH_MODE": "disabled",
            "SERVEFLOW_DATABASE_URL": dsn,
            "RAY_ADDRESS": f"127.0.0.1:{self.gcs_port}",
            # One proxy (on the head) for both nodes: without this it would send every request
            # to the head's own Coordinator, and the other would drive no run worth losing.
            "RAY_SERVE_PROXY_PREFER_LOCAL_NODE_ROUTING": "0",
            # Its own HAProxy files and ports: the session's cluster (same host) has its own.
            **haproxy_host_env(self.temp_dir, http_ports=range(35000, 36000), grpc_ports=range(45000, 46000)),
        }
        self.serve_proc: subprocess.Popen[bytes] | None = None

    def _ray_start(self, *args: str) -> None:
        subprocess.run([RAY, "start", *args, "--disable-usage-stats"], env=self.env, check=True, capture_output=True, timeout=120)

    def start(self) -> None:
        self._ray_start(
            "--head", f"--port={self.gcs_port}", "--num-cpus=6", f"--temp-dir={self.temp_dir}", "--include-dashboard=false",
            '--resources={"head_slot": 100, "coordinator_slot": 1}',
        )
        self._ray_start(
            f"--address=127.0.0.1:{self.gcs_port}", "--num-cpus=3", f"--node-manager-port={self.worker_manager_port}",
            '--resources={"coordinator_slot": 1}',
        )
        config = self._serve_config()
        path = self.root / "serve_config.yaml"
        path.write_text(yaml.safe_dump(config))
        log = open(self.root / "serve_run.log", "wb")  # noqa: SIM115 - closed with the process
        self.serve_proc = subprocess.Popen([SERVE, "run", str(path)], cwd=ROOT, env=self.env, stdout=log, stderr=log)

    def _serve_config(self) -> dict[str, Any]:
        on_head = {"resources": {"head_slot": 0.01}}
        pools = {
            "general": {"handler_modules": ["serve_app.examples.basic"], "task_types": ["echo", "noop", "sleep"], **on_head},
            "fragile": {
                "handler_modules": ["serve_app.examples.faults"], "task_types": ["record"], "max_ongoing_requests": 64, **on_head,
            },
        }
        args = {
            "pools": pools,
            "probe_interval_s": 0.5,
            "coordinator": {"num_replicas": 2, "num_cpus": 0.1, "resources": {"coordinator_slot": 1}},
            "workflows": {
                "store": "postgres",
                "lease_s": LEASE_S,
                "definitions": _workflows(self.record_path),
                # Both Coordinators fire this schedule and deliver this subscription.
                "schedules": [{"name": "mn", "workflow": "ticked", "cron": "*/2 * * * * *", "input": {"key": "mn-tick"}, "overlap": "allow"}],
                "subscriptions": [{"name": "mn_orders", "types": ["order"], "workflow": "ticked"}],
            },
        }
        return {
            "proxy_location": "HeadOnly",
            "http_options": {"host": "127.0.0.1", "port": self.http_port},
            "grpc_options": {"port": self.grpc_port, "grpc_servicer_functions": ["serve_app.ingress.servicer.add_TaskServiceServicer_to_server"]},
            "applications": [{"name": "serveflow", "route_prefix": "/", "import_path": "graphs.serveflow:build_app", "args": args}],
        }

    def pids(self, pattern: str) -> list[int]:
        out = subprocess.run(["pgrep", "-f", pattern], capture_output=True, text=True).stdout
        return [int(p) for p in out.split()]

    def kill_worker_node(self) -> int:
        """SIGKILL the second node's raylet and every process it started (its workers): node loss."""
        (raylet,) = self.pids(f"raylet.*node_manager_port={self.worker_manager_port}")
        children = subprocess.run(["pgrep", "-P", str(raylet)], capture_output=True, text=True).stdout.split()
        for pid in [raylet, *map(int, children)]:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        return len(children)

    def stop(self) -> None:
        if self.serve_proc is not None and self.serve_proc.poll() is None:
            self.serve_proc.send_signal(signal.SIGINT)  # serve run shuts Serve down on Ctrl-C
            try:
                self.serve_proc.wait(60)
            except subprocess.TimeoutExpired:
                self.serve_proc.kill()
        # Every process of this cluster names its session under our temp dir (or was started by one that does).
        for pid in self.pids(self.temp_dir) + self.pids(f"127.0.0.1:{self.gcs_port}"):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        shutil.rmtree(self.temp_dir, ignore_errors=True)  # the cluster's session files


@pytest.fixture(scope="module")
def cluster(postgres: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    import psycopg

    with psycopg.connect(postgres.dsn, autocommit=True) as conn:
        conn.execute("CREATE DATABASE multinode")
    c = Cluster(tmp_path_factory.mktemp("multinode"), postgres.dsn.rsplit("/", 1)[0] + "/multinode")
    try:
        c.start()
        with httpx.Client(base_url=f"http://127.0.0.1:{c.http_port}", timeout=10) as http:
            wait_until(lambda: http.get("/readyz").status_code == 200, 180, what="the two-node app ready")
            wait_until(lambda: _coordinator_nodes(http) == 2, 60, what="a Coordinator on each node")
            # Serve says both run; the ingress (HAProxy in the default profile) adds the second to
            # its rotation after a reload and two passed health checks: wait until both answer.
            answered: set[str] = set()
            wait_until(lambda: answered.add(_answering_coordinator(http)) or len(answered) == 2, 60, interval_s=0.1, what="both Coordinators answering through the ingress")
        yield c
    finally:
        c.stop()


def _coordinator_nodes(http: httpx.Client) -> int:
    states = http.get("/v1/status").json()["deployments"].get("Coordinator", {}).get("replica_states", {})
    return int(states.get("RUNNING", 0))


def _answering_coordinator(http: httpx.Client) -> str:
    return str(http.get("/v1/status").json()["components"]["Coordinator"]["details"]["replica_id"])


def _owners(dsn: str, runs: dict[str, str]) -> collections.Counter[str]:
    """Which Coordinator replica holds each run's lease (read from Postgres itself)."""
    import psycopg

    with psycopg.connect(dsn) as conn:
        rows = conn.execute("SELECT owner FROM runs WHERE run_id = ANY(%s)", (list(runs),)).fetchall()
    return collections.Counter(r[0] for r in rows)


def _executions(path: str) -> collections.Counter[str]:
    with open(path, encoding="utf-8") as f:
        return collections.Counter(line.strip() for line in f if line.strip())


def _start_runs(http: httpx.Client, tag: str, n: int) -> dict[str, str]:
    """Start ``n`` runs as a careful client does: a retryable failure (a request that met the dying
    replica) is sent again with the same idempotency key, so each key is one run, exactly once."""
    runs = {}
    for i in range(n):
        workflow = "diamond" if i % 2 == 0 else "fanout"
        key = f"{tag}{i}"

        def start(workflow: str = workflow, key: str = key) -> httpx.Response | None:
            r = http.post(f"/v1/workflows/{workflow}/runs", json={"input": {"key": key}, "idempotency_key": key})
            return r if r.status_code in (200, 202) else None

        r = wait_until(start, 60, interval_s=0.5, what=f"run {key} accepted")
        runs[r.json()["run_id"]] = key
    return runs


def _finished_steps(http: httpx.Client, runs: dict[str, str]) -> set[str]:
    done = set()
    for run_id, key in runs.items():
        for step in http.get(f"/v1/runs/{run_id}").json()["run"]["steps"]:
            if step["status"] == "succeeded":
                done.add(f"{key}.{step['name']}")
    return done


def _await_all(http: httpx.Client, runs: dict[str, str], timeout_s: float) -> dict[str, dict[str, Any]]:
    def all_done() -> dict[str, dict[str, Any]] | None:
        got = {run_id: http.get(f"/v1/runs/{run_id}").json()["run"] for run_id in runs}
        return got if all(r["status"] in ("succeeded", "failed", "cancelled") for r in got.values()) else None

    return wait_until(all_done, timeout_s, interval_s=1.0, what="every accepted run finished")


def _assert_fault_survived(label: str, http: httpx.Client, cluster: Cluster, runs: dict[str, str], finished_before: set[str]) -> None:
    final = _await_all(http, runs, 240)
    statuses = collections.Counter(r["status"] for r in final.values())
    executions = _executions(cluster.record_path)
    mine = {k: v for k, v in executions.items() if k.split(".")[0] in set(runs.values())}
    steps_total = sum(len(r["steps"]) for r in final.values())
    rerun = {k: v for k, v in mine.items() if v > 1}
    in_flight_bound = sum(len(r["steps"]) for r in final.values()) - len(finished_before)
    print(
        f"{label}: runs={len(runs)} lost=0 statuses={dict(statuses)} steps={steps_total} "
        f"finished_before={len(finished_before)} re-executed={len(rerun)} (bound {in_flight_bound})"
    )
    assert statuses == {"succeeded": len(runs)}, final  # lost = 0: every accepted run finished, and well
    assert len(mine) == steps_total  # every step ran
    assert not [k for k in finished_before if mine[k] != 1]  # nothing that had finished ran again
    assert len(rerun) <= in_flight_bound


def test_a_concurrency_key_holds_across_two_coordinators(cluster: Cluster) -> None:
    """Runs of one key sent to both Coordinators: one at a time, in order, none lost."""
    import psycopg

    customer = "acme"
    with httpx.Client(base_url=f"http://127.0.0.1:{cluster.http_port}", timeout=30) as http:
        ids = []
        for i in range(12):
            r = http.post("/v1/workflows/billing/runs", json={"input": {"key": f"bill{i}", "customer": customer}})
            assert r.status_code == 202, r.text
            ids.append(r.json()["run_id"])
        with psycopg.connect(cluster.dsn) as conn:  # while queued, a run's owner is the replica that took it
            creators = conn.execute("SELECT DISTINCT owner FROM runs WHERE run_id = ANY(%s) AND status = 'queued'", (ids,)).fetchall()
        final = _await_all(http, {i: i for i in ids}, 120)
    assert len(creators) == 2, creators  # both Coordinators accepted runs of the key
    assert all(r["status"] == "succeeded" for r in final.values()), final
    spans = sorted((r["started_at"], r["finished_at"]) for r in final.values())
    assert all(prev[1] <= nxt[0] for prev, nxt in zip(spans, spans[1:], strict=False)), spans  # never two at once
    executions = _executions(cluster.record_path)
    assert all(executions[f"bill{i}.bill"] == 1 for i in range(12))
    print(f"concurrency key across 2 Coordinators: 12 runs, created on {len(creators)} replicas, no overlap")


def test_two_coordinators_fire_each_tick_once_and_deliver_each_event_once(cluster: Cluster) -> None:
    import psycopg

    with httpx.Client(base_url=f"http://127.0.0.1:{cluster.http_port}", timeout=30) as http:
        for i in range(20):  # sent through the proxy to either Coordinator
            # The workflow records ${input.key}: the event's key, one per event, so executions count per event.
            r = http.post("/v1/events", json={"type": "order", "id": f"mn-ev-{i}", "key": f"mn-ev-{i}", "payload": {"n": i}})
            assert r.status_code == 200, r.text
        time.sleep(8)  # about four ticks
        with psycopg.connect(cluster.dsn) as conn:
            keys = [r[0] for r in conn.execute("SELECT idempotency_key FROM runs WHERE workflow = 'ticked'").fetchall()]
            owners = conn.execute("SELECT owner FROM subscriptions WHERE name = 'mn_orders'").fetchall()
    ticks = collections.Counter(k for k in keys if k.startswith("schedule.mn."))
    events = collections.Counter(k for k in keys if k.startswith("event.mn_orders."))
    assert len(ticks) >= 3 and set(ticks.values()) == {1}, ticks  # each tick one run, whichever Coordinator fired
    assert len(events) == 20 and set(events.values()) == {1}  # each event one run
    deliveries = _executions(cluster.record_path)
    executed = {k: n for k, n in deliveries.items() if k.startswith("mn-ev-")}
    assert len(executed) == 20, executed
    duplicates = sum(n - 1 for n in executed.values())
    print(f"two Coordinators: {len(ticks)} ticks, 20 events, duplicate executions {duplicates}, subscription held by {owners}")
    assert duplicates == 0  # at-least-once allows more; with both alive the lease means none


def test_losing_a_node_loses_no_run(cluster: Cluster) -> None:
    with httpx.Client(base_url=f"http://127.0.0.1:{cluster.http_port}", timeout=30) as http:
        runs = _start_runs(http, "node", 12)
        time.sleep(1.5)  # some steps done, some in flight, on both Coordinators
        owners = _owners(cluster.dsn, runs)
        assert len(owners) == 2, owners  # both Coordinators drive runs: losing one matters
        finished_before = _finished_steps(http, runs)
        killed = cluster.kill_worker_node()
        started = time.monotonic()
        runs.update(_start_runs(http, "after", 4))  # accepted while one Coordinator is gone
        _assert_fault_survived(f"node loss ({killed} worker processes killed)", http, cluster, runs, finished_before)
        print(f"node loss: owners before {dict(owners)}; every run finished {time.monotonic() - started:.1f}s after the kill (lease_s={LEASE_S})")


def test_a_postgres_restart_mid_run_loses_no_run(cluster: Cluster, postgres: Any) -> None:
    with httpx.Client(base_url=f"http://127.0.0.1:{cluster.http_port}", timeout=30) as http:
        wait_until(lambda: http.get("/readyz").status_code == 200, 60, what="app ready")
        runs = _start_runs(http, "pg", 8)
        time.sleep(1.5)
        finished_before = _finished_steps(http, runs)
        postgres.stop("fast")
        try:
            time.sleep(2)
            refused = http.post("/v1/workflows/diamond/runs", json={"input": {"key": "while-away"}})
            assert refused.status_code == 503 and refused.json()["error"]["code"] == "unavailable", refused.text
            assert refused.json()["error"]["retryable"] is True
            status = http.get("/v1/status").json()
            coordinator = status["components"]["Coordinator"]
            parts = {name: c["status"] for name, c in {**status["components"], **status["pools"]}.items()}
            print("status while Postgres is away:", status["status"], parts, coordinator["error"])
            assert coordinator["status"] == "degraded" and "postgres at postgresql://postgres@127.0.0.1" in coordinator["error"]
            assert status["status"] != "healthy"
        finally:
            postgres.start()
        _assert_fault_survived("postgres restart", http, cluster, runs, finished_before)
        wait_until(lambda: http.get("/v1/status").json()["components"]["Coordinator"]["status"] == "healthy", 60, what="healthy again")
