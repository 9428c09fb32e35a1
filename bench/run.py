"""serveflow benchmarks: one run, one machine, results written to BENCHMARKS.md.

    python -m bench.run              # full run (about 10 minutes on 2 cores)
    python -m bench.run --quick      # fewer requests and repeats

Measures (medians over repeats, ratios taken within this one run):
  1. single-task noop over HTTP and gRPC, concurrency 1 and 16, serveflow vs a
     hand-written Ray Serve app with the same hops (bench/baseline.py);
  2. workflow overhead: chain of 10 noop steps, ordered by depends_on and again with each
     step reading the one before whole (per-step ms; serveflow's run from its start to its
     end as recorded, plain Ray from the first submission to ray.get; 30 of each,
     alternating), and a fan-out of 16 sleeping steps (makespan vs critical path), vs the
     same DAG as plain Ray tasks;
  3. durable-store cost: async runs/s with SQLite vs the in-memory store;
  4. startup of `serve run serve_config.yaml` to all deployments HEALTHY, and idle RSS,
     alternating with the same graph of idle deployments (what Ray and Serve take alone).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import psutil

from serve_app.core.settings import DEFAULT_SERVE_PROFILE, SERVE_PROFILES
from serve_app.testing import free_port

ROOT = Path(__file__).resolve().parents[1]
SERVICER = "serve_app.ingress.servicer.add_TaskServiceServicer_to_server"


def wait_ready(url: str, timeout: float) -> float:
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return time.monotonic() - start
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"{url} not ready after {timeout}s")


# --------------------------------------------------------------------------- startup


class ServeRun:
    """``serve run <config>`` in its own session with ``env``; stopped by SIGINT, then by PID."""

    def __init__(self, config: Path, env: dict[str, str], log: Path) -> None:
        for port in (8000, 9000):  # a leftover proxy (SO_REUSEPORT) would answer part of the load
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    raise RuntimeError(f"port {port} is in use: stop what listens there first")
        self._log = log.open("w")
        self.started = time.monotonic()
        self.proc = subprocess.Popen(
            [str(Path(sys.executable).parent / "serve"), "run", str(config)],
            cwd=ROOT,
            env={**os.environ, **env},
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def wait_ready(self, probe: Any, timeout_s: float = 180) -> float:
        """Seconds from the start of ``serve run`` until ``probe()`` is true."""
        while time.monotonic() - self.started < timeout_s:
            if self.proc.poll() is not None:
                raise RuntimeError(f"serve run exited with {self.proc.returncode}; see {self._log.name}")
            try:
                if probe():
                    return time.monotonic() - self.started
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise RuntimeError(f"not ready after {timeout_s}s; see {self._log.name}")

    def stop(self) -> None:
        try:
            pids = [self.proc.pid] + [c.pid for c in psutil.Process(self.proc.pid).children(recursive=True)]
        except psutil.NoSuchProcess:
            pids = []
        self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.wait(60)
        except subprocess.TimeoutExpired:
            pass
        for pid in pids:  # whatever the driver left behind (raylet, workers, haproxy), by PID
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self._log.close()
        time.sleep(3)



def startup_floor_config(path: Path) -> Path:
    """``serve_config.yaml`` with its application swapped for ``bench.baseline:build_startup_floor``:
    the same args, ports, gRPC servicer and proxy, the same deployments, none of serveflow's code."""
    import yaml

    config = yaml.safe_load((ROOT / "serve_config.yaml").read_text())
    (app,) = config["applications"]
    app["import_path"] = "bench.baseline:build_startup_floor"
    path.write_text(yaml.safe_dump(config))
    return path


def bench_startup(repeats: int) -> dict[str, Any]:
    """`serve run serve_config.yaml` (its own local cluster) until /readyz, then idle RSS of the
    process tree; alternating with the same graph of idle deployments (Ray's and Serve's floor)."""
    times: dict[str, list[float]] = {"serveflow": [], "floor": []}
    rss: dict[str, list[float]] = {"serveflow": [], "floor": []}
    # As the README starts it: serveflow's default Serve profile in the environment of `serve run`.
    profile = {k: v for k, v in SERVE_PROFILES[DEFAULT_SERVE_PROFILE].items() if k not in os.environ}
    with tempfile.TemporaryDirectory() as tmp:
        configs = {"serveflow": ROOT / "serve_config.yaml", "floor": startup_floor_config(Path(tmp) / "floor.yaml")}
        for i in range(repeats):
            for system, config in configs.items():  # alternate, so drift on the machine hits both
                env = {**profile, "HOME": f"{tmp}/home-{system}-{i}", "RAY_AUTH_MODE": os.environ.get("RAY_AUTH_MODE", "token")}
                run = ServeRun(config, env, Path(tmp) / f"startup-{system}-{i}.log")
                try:
                    times[system].append(
                        run.wait_ready(lambda: httpx.get("http://127.0.0.1:8000/readyz", timeout=2).status_code == 200)
                    )
                    time.sleep(10)  # idle
                    tree = [psutil.Process(run.proc.pid), *psutil.Process(run.proc.pid).children(recursive=True)]
                    rss[system].append(sum(p.memory_info().rss for p in tree if p.is_running()) / 2**20)
                finally:
                    run.stop()
    return {
        "startup_s": statistics.median(times["serveflow"]),
        "startup_all_s": times["serveflow"],
        "idle_rss_mib": statistics.median(rss["serveflow"]),
        "floor_startup_s": statistics.median(times["floor"]),
        "floor_startup_all_s": times["floor"],
        "floor_idle_rss_mib": statistics.median(rss["floor"]),
    }


# --------------------------------------------------------------------------- in-process cluster


def bench_args(store: str, store_path: str) -> dict[str, Any]:
    return {
        "pools": {
            "general": {
                "handler_modules": ["serve_app.examples.basic"],
                "task_types": ["noop", "sleep", "echo"],
                "max_ongoing_requests": 32,
                "max_concurrency": 16,
            }
        },
        "workflows": {
            "store": store,
            "store_path": store_path,
            "definitions": [
                {
                    "name": "chain10",
                    "steps": [{"name": "s0", "task_type": "noop"}]
                    + [{"name": f"s{i}", "task_type": "noop", "depends_on": [f"s{i-1}"]} for i in range(1, 10)],
                },
                {
                    # The same chain, each step reading the one before whole, as plain Ray's chain
                    # passes each result on as an ObjectRef.
                    "name": "chain10_data",
                    "steps": [{"name": "s0", "task_type": "noop"}]
                    + [{"name": f"s{i}", "task_type": "noop", "input": {"prev": f"${{steps.s{i-1}.result}}"}} for i in range(1, 10)],
                },
                {
                    "name": "fanout16",
                    "steps": [{"name": f"f{i}", "task_type": "sleep", "input": {"seconds": 1.0}} for i in range(16)]
                    + [{"name": "join", "task_type": "noop", "depends_on": [f"f{i}" for i in range(16)]}],
                },
                {"name": "one", "steps": [{"name": "only", "task_type": "noop"}]},
            ],
        },
    }


def run_load(
    target: str, protocol: str, concurrency: int, count: int | None, application: str | None, *, seconds: float = 300
) -> dict[str, Any]:
    """``noop`` tasks through the own load tool: ``count`` of them, or as many as fit in ``seconds``
    (``count=None``); every one must come back ok (nothing lost, nothing hung)."""
    from serve_app.client.load import LoadConfig, run_load as _run

    cfg = LoadConfig(
        target=target,
        protocol=protocol,  # type: ignore[arg-type]
        task_type="noop",
        payload={},
        count=count,
        continuous=count is None,
        interval_s=0.0,
        workers=concurrency,
        duration_s=seconds,
        application=application,
    )
    report = asyncio.run(_run(cfg))
    s = report.summary()
    assert s["lost"] == 0 and s["hung"] == 0 and report.ok == report.sent, s
    return s


def bench_single_task(http: str, grpc_target: str, repeats: int, counts: dict[int, int]) -> list[dict[str, Any]]:
    rows = []
    for protocol in ("http", "grpc"):
        for concurrency in (1, 16):
            for system in ("serveflow", "baseline"):
                if protocol == "http":
                    target, app = (http if system == "serveflow" else http + "/baseline"), None
                else:
                    target, app = grpc_target, system
                run_load(target, protocol, concurrency, 50, app)  # warm-up
                samples = [run_load(target, protocol, concurrency, counts[concurrency], app) for _ in range(repeats)]
                rows.append(
                    {
                        "protocol": protocol,
                        "concurrency": concurrency,
                        "system": system,
                        "rps": statistics.median(s["throughput_rps"] for s in samples),
                        "p50_ms": statistics.median(s["p50_ms"] for s in samples),
                        "p99_ms": statistics.median(s["p99_ms"] for s in samples),
                    }
                )
                print(json.dumps(rows[-1]), flush=True)
    return rows


def _run_wait(client: httpx.Client, workflow: str) -> dict[str, Any]:
    r = client.post(f"/v1/workflows/{workflow}/runs", json={"wait": True, "wait_timeout_s": 120})
    run = r.json()["run"]
    assert run["status"] == "succeeded", run
    return run


def bench_workflows(http: str, repeats: int, chain_runs: int = 30) -> dict[str, Any]:
    """Chains: ``chain_runs`` of each system, alternating (a chain is ~25 ms, and this machine
    drifts); fan-outs: ``repeats`` of each (a second each)."""
    import ray

    def span(run: dict[str, Any]) -> float:
        return float(run["finished_at"] - run["started_at"])

    def critical(run: dict[str, Any]) -> float:
        steps = {s["name"]: s for s in run["steps"]}
        sleep = max(steps[f"f{i}"]["finished_at"] - steps[f"f{i}"]["started_at"] for i in range(16))
        join = steps["join"]["finished_at"] - steps["join"]["started_at"]
        return float(sleep + join)

    @ray.remote(num_cpus=0.01)
    def noop(*upstream: Any) -> None:
        return None

    @ray.remote(num_cpus=0.01)
    def sleep1() -> None:
        time.sleep(1.0)

    def ray_chain10() -> float:
        t = time.perf_counter()
        ref = noop.remote()
        for _ in range(9):
            ref = noop.remote(ref)
        ray.get(ref)
        return time.perf_counter() - t

    ray.get(noop.remote())
    ray.get(noop.remote(*[sleep1.remote() for _ in range(16)]))  # warm-up: start the worker processes
    chain, data_chain, ray_chain, ray_fan = [], [], [], []
    with httpx.Client(base_url=http, timeout=180) as c:
        _run_wait(c, "chain10"), _run_wait(c, "chain10_data"), ray_chain10()
        for _ in range(chain_runs):
            chain.append(_run_wait(c, "chain10"))
            data_chain.append(_run_wait(c, "chain10_data"))
            ray_chain.append(ray_chain10())
        fan = [_run_wait(c, "fanout16") for _ in range(repeats)]
    for _ in range(repeats):
        t = time.perf_counter()
        ray.get(noop.remote(*[sleep1.remote() for _ in range(16)]))  # fan-out, then the join
        ray_fan.append(time.perf_counter() - t)
    chain_s = statistics.median(span(r) for r in chain)
    fan_s = statistics.median(span(r) for r in fan)
    crit_s = statistics.median(critical(r) for r in fan)
    return {
        "chain10_s": chain_s,
        "chain10_per_step_ms": chain_s / 10 * 1000,
        "chain10_data_per_step_ms": statistics.median(span(r) for r in data_chain) / 10 * 1000,
        "ray_chain10_s": statistics.median(ray_chain),
        "ray_per_step_ms": statistics.median(ray_chain) / 10 * 1000,
        "fanout16_makespan_s": fan_s,
        "fanout16_critical_path_s": crit_s,
        "fanout16_ratio": fan_s / crit_s,
        "ray_fanout16_s": statistics.median(ray_fan),
    }


def runs_per_s(http: str, workflow: str, n: int, concurrency: int = 16) -> float:
    """Runs/s at saturation: n runs of ``workflow``, ``concurrency`` at a time, each started with
    ``wait: true`` so the answer comes when the run has succeeded (nothing polls a listing)."""

    async def go() -> float:
        async with httpx.AsyncClient(base_url=http, timeout=120) as c:
            left = iter(range(n))

            async def worker() -> None:
                for _ in left:
                    r = await c.post(f"/v1/workflows/{workflow}/runs", json={"wait": True, "wait_timeout_s": 60})
                    assert r.status_code == 200 and r.json()["run"]["status"] == "succeeded", r.text[:300]

            started = time.perf_counter()
            await asyncio.gather(*[worker() for _ in range(concurrency)])
            return n / (time.perf_counter() - started)

    return asyncio.run(go())


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--skip-startup", action="store_true")
    parser.add_argument("--out", default=str(ROOT / "BENCHMARKS.md"))
    parser.add_argument("--label", default="", help="note recorded with the results (e.g. 'before fix')")
    args = parser.parse_args()
    repeats = 2 if args.quick else 3
    counts = {1: 100, 16: 300} if args.quick else {1: 300, 16: 1500}
    results: dict[str, Any] = {"label": args.label}

    if not args.skip_startup:
        results["startup"] = bench_startup(1 if args.quick else 2)
        print(json.dumps(results["startup"]), flush=True)

    from serve_app.core.connect import connect, disconnect

    http_port, grpc_port = free_port(), free_port()
    connect(address="local", num_cpus=8, include_dashboard=False, log_to_driver=False)
    # Serve after connect(): handles take their transport from the environment of the process
    # that imports Serve first, and the hand-written baseline must use the cluster's, as
    # `serve run` would give it (serveflow's replicas remake their handles; the baseline's do not).
    from ray import serve

    from bench.baseline import build_baseline
    from graphs.serveflow import build_app
    serve.start(
        http_options={"host": "127.0.0.1", "port": http_port},
        grpc_options={"port": grpc_port, "grpc_servicer_functions": [SERVICER]},
    )
    http, grpc_target = f"http://127.0.0.1:{http_port}", f"127.0.0.1:{grpc_port}"
    with tempfile.TemporaryDirectory() as tmp:
        try:
            serve.run(build_baseline(), name="baseline", route_prefix="/baseline")
            serve.run(build_app(bench_args("sqlite", f"{tmp}/runs.sqlite3")), name="serveflow", route_prefix="/")
            wait_ready(http + "/readyz", 120)
            results["single_task"] = bench_single_task(http, grpc_target, repeats, counts)
            results["workflows"] = bench_workflows(http, repeats)
            print(json.dumps(results["workflows"]), flush=True)
            n = 200 if args.quick else 400
            # The same app on the memory store beside it; the two alternate, so drift hits both.
            serve.run(build_app(bench_args("memory", "")), name="serveflow_memory", route_prefix="/memory")
            wait_ready(http + "/memory/readyz", 120)
            runs_per_s(http, "one", 50), runs_per_s(http + "/memory", "one", 50)  # warm-up
            sqlite, memory = [], []
            for _ in range(repeats + 1):
                sqlite.append(runs_per_s(http, "one", n))
                memory.append(runs_per_s(http + "/memory", "one", n))
            sqlite_rps, memory_rps = statistics.median(sqlite), statistics.median(memory)
            results["durable"] = {"sqlite_runs_per_s": sqlite_rps, "memory_runs_per_s": memory_rps, "runs": n}
            print(json.dumps(results["durable"]), flush=True)
        finally:
            serve.shutdown()
            disconnect()
    write_report(results, Path(args.out), quick=args.quick)


def _machine() -> str:
    import ray

    mem = psutil.virtual_memory().total / 2**30
    return (
        f"{platform.machine()}, {psutil.cpu_count()} cores, {mem:.0f} GiB RAM, "
        f"Python {platform.python_version()}, Ray {ray.__version__}, {platform.platform()}"
    )


def write_report(r: dict[str, Any], path: Path, *, quick: bool) -> None:
    rows = r["single_task"]
    lines = [
        "#### Single task (noop): serveflow vs hand-written Ray Serve, same hops",
        "",
        "| protocol | concurrency | serveflow req/s | baseline req/s | ratio (#15: ≥ 0.95) | serveflow p50 ms | baseline p50 ms | p50 ratio (#15: ≤ 1.05) | serveflow p99 ms | baseline p99 ms |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for protocol in ("http", "grpc"):
        for c in (1, 16):
            sf = next(x for x in rows if x["protocol"] == protocol and x["concurrency"] == c and x["system"] == "serveflow")
            bl = next(x for x in rows if x["protocol"] == protocol and x["concurrency"] == c and x["system"] == "baseline")
            lines.append(
                f"| {protocol} | {c} | {sf['rps']:.0f} | {bl['rps']:.0f} | {sf['rps'] / bl['rps']:.2f} | "
                f"{sf['p50_ms']:.1f} | {bl['p50_ms']:.1f} | {sf['p50_ms'] / bl['p50_ms']:.2f} | {sf['p99_ms']:.1f} | {bl['p99_ms']:.1f} |"
            )
    w = r["workflows"]
    lines += [
        "",
        "#### Workflows",
        "",
        "| measure | serveflow | plain Ray tasks |",
        "|---|---|---|",
        f"| chain of 10 noop steps, total | {w['chain10_s'] * 1000:.0f} ms | {w['ray_chain10_s'] * 1000:.0f} ms |",
        f"| per-step overhead | {w['chain10_per_step_ms']:.2f} ms | {w['ray_per_step_ms']:.2f} ms |",
        f"| per-step ratio (target ≤ 1.3) | {w['chain10_per_step_ms'] / w['ray_per_step_ms']:.2f} | |",
        f"| per-step, each step reading the one before whole | {w['chain10_data_per_step_ms']:.2f} ms | {w['ray_per_step_ms']:.2f} ms |",
        f"| per-step ratio, results passed | {w['chain10_data_per_step_ms'] / w['ray_per_step_ms']:.2f} | |",
        f"| fan-out of 16 × sleep(1 s) + join, makespan | {w['fanout16_makespan_s']:.2f} s | {w['ray_fanout16_s']:.2f} s |",
        f"| critical path (longest sleep step + join step) | {w['fanout16_critical_path_s']:.2f} s | 1.00 s |",
        f"| makespan / critical path (target ≤ 1.2) | {w['fanout16_ratio']:.2f} | {w['ray_fanout16_s']:.2f} |",
    ]
    d = r["durable"]
    lines += [
        "",
        "#### Durable store: async runs of a one-step workflow",
        "",
        f"| store | runs/s ({d['runs']} one-step runs, 16 at a time, each started with wait: true; two apps side by side, alternating) |",
        "|---|---|",
        f"| SQLite (WAL) | {d['sqlite_runs_per_s']:.1f} |",
        f"| memory (persistence off) | {d['memory_runs_per_s']:.1f} |",
        f"| SQLite / memory | {d['sqlite_runs_per_s'] / d['memory_runs_per_s']:.2f} |",
    ]
    if "startup" in r:
        s = r["startup"]
        lines += [
            "",
            "#### Startup and memory",
            "",
            f"- `serve run serve_config.yaml` (fresh local Ray cluster) to `/readyz` 200 with every pool ready: "
            f"median {s['startup_s']:.1f} s (runs: {', '.join(f'{x:.1f}' for x in s['startup_all_s'])})",
            f"- the same graph of idle deployments (`bench.baseline:build_startup_floor`, same args, names, "
            f"CPU shares and Serve profile; alternating starts): median {s['floor_startup_s']:.1f} s "
            f"(runs: {', '.join(f'{x:.1f}' for x in s['floor_startup_all_s'])}); serveflow's own share "
            f"{s['startup_s'] - s['floor_startup_s']:+.1f} s, ratio {s['startup_s'] / s['floor_startup_s']:.2f}",
            f"- RSS of the whole process tree (driver, Ray daemons, every replica) after 10 s idle: "
            f"{s['idle_rss_mib']:.0f} MiB (idle graph: {s['floor_idle_rss_mib']:.0f} MiB)",
        ]
    header = [
        f"### Run {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}{' — ' + r['label'] if r['label'] else ''}",
        "",
        f"Machine: {_machine()}. Command: `python -m bench.run{' --quick' if quick else ''}`. "
        "Load: serveflow's own async load tool (`serve_app/client/load.py`), medians over repeats.",
        "",
    ]
    section = "\n".join(header + lines) + "\n"
    insert_section(path, section)
    print(section)


def insert_section(path: Path, section: str) -> None:
    """Put ``section`` first under the results marker of BENCHMARKS.md (newest run on top)."""
    existing = path.read_text() if path.exists() else ""
    marker = "<!-- results -->"
    if marker in existing:
        head, _, tail = existing.partition(marker)
        path.write_text(head + marker + "\n\n" + section + "\n" + tail.lstrip("\n"))
    else:
        path.write_text(f"# Benchmarks\n\n{marker}\n\n{section}")


if __name__ == "__main__":
    main()
